"""Stage orchestration only: respond -> (critique -> revise) x rounds -> pair -> write.

Every stage sends all of its live rows to the engine in one call (vLLM schedules them as one batch and its
prefix cache shares the few-shot turns); rows that fail a check leave the flow with a reason and are written
to rejected.jsonl, never silently lost.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import constitution as constitution_mod
from . import prompts as prompts_mod
from . import fingerprint, quality, report, store, turns
from .backends import Backend, Conversation, Generation, Params, make_backend
from .config import RunConfig
from .ledger import Ledger, request_key
from .models import resolve
from .progress import Tracker
from .prompts import PromptRecord


@dataclass
class Row:
    id: str
    prompt: PromptRecord
    sample: int
    params: Params                     # respond-stage sampling for this sample
    principles: list[str]              # one principle id per round
    history: list[dict] = field(default_factory=list)  # turns after the user prompt
    original: str = ""
    critiques: list[str] = field(default_factory=list)
    revisions: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    reason: str | None = None
    stage: str | None = None
    similarity: float | None = None
    trace: list[dict] = field(default_factory=list)


def _seed(*key) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(key).encode()).digest()[:4], "big") & 0x7FFFFFFF


def _draw(rng: random.Random, r) -> float:
    lo, hi = (r, r) if isinstance(r, (int, float)) else r
    return round(rng.uniform(lo, hi), 4)


def build_rows(cfg: RunConfig, recs: list[PromptRecord], const) -> list[Row]:
    """One row per (prompt, sample). All randomness is keyed by (seed, prompt id, sample): reproducible and
    independent of row order, limit or sharding."""
    rows = []
    for rec in recs:
        for s in range(cfg.samples):
            rng = random.Random(json.dumps([cfg.seed, "sampling", rec.id, s]))
            params = Params(temperature=_draw(rng, cfg.sampling.temperature), top_p=_draw(rng, cfg.sampling.top_p),
                            max_tokens=cfg.sampling.max_tokens.respond, seed=_seed(cfg.seed, rec.id, s, "respond"))
            rows.append(Row(f"{rec.id}-s{s}", rec, s, params, const.sample(cfg.rounds, cfg.seed, rec.id, s)))
    return rows


class Run:
    def __init__(self, cfg: RunConfig, backend: Backend, const, tracker: Tracker, ledger: Ledger):
        self.cfg, self.backend, self.const, self.tracker, self.ledger = cfg, backend, const, tracker, ledger
        self.fs = turns.few_shot_turns(const, cfg.few_shot)
        self.rejected: list[Row] = []

    def reject(self, row: Row, stage: str, reason: str) -> None:
        row.reason, row.stage = reason, stage
        self.rejected.append(row)

    def conv(self, row: Row, with_few_shot: bool) -> Conversation:
        return turns.head(row.prompt.system, self.fs if with_few_shot else [], row.prompt.prompt) + row.history

    def stage(self, name: str, rnd: int, rows: list[Row], convs: list[Conversation], params: list[Params],
              max_tokens: int) -> list[tuple[Row, Generation]]:
        """Context check, then one batched engine call for the stage; returns (row, generation) for live rows."""
        lens = self.backend.count_tokens(convs)
        live = []
        for row, conv, p, n in zip(rows, convs, params, lens):
            if n + max_tokens > self.backend.max_model_len:
                why = "prompt_too_long" if name == "respond" else "context_overflow"
                row.trace.append({"stage": name, "round": rnd, "skipped": why, "prompt_tokens": n})
                self.reject(row, name, why)
            else:
                live.append((row, conv, p))
        label = name if name == "respond" else f"{name} r{rnd}"
        # Reuse every generation the ledger already holds (a resumed run); send only the rest, as one batch.
        keys = [request_key(self.backend.model, c, p) for _, c, p in live]
        gens: list[Generation | None] = [self.ledger.get(k) for k in keys]
        todo = [i for i, g in enumerate(gens) if g is None]
        if len(todo) < len(live):
            self.tracker.console.print(f"{label}: {len(live) - len(todo)} rows reused from an earlier run")
        with self.tracker.stage(label, len(todo)) as on_done:
            def commit(j: int, g: Generation) -> None:
                self.ledger.add(keys[todo[j]], g)
                on_done(j, g)
            if todo:
                new = self.backend.generate([live[i][1] for i in todo], [live[i][2] for i in todo], commit)
                for i, g in zip(todo, new):
                    gens[i] = g
        self.ledger.sync()
        skip = len(self.fs) if name != "respond" else 0
        out = []
        for (row, conv, p), g in zip(live, gens):
            head = 1 if row.prompt.system else 0
            row.trace.append({"stage": name, "round": rnd, "input": conv[:head] + conv[head + skip:],
                              "few_shot_turns": skip, "output": g.text, "finish_reason": g.finish_reason,
                              "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                              "params": {"temperature": p.temperature, "top_p": p.top_p, "seed": p.seed,
                                         "max_tokens": p.max_tokens}})
            out.append((row, g))
        return out

    def respond(self, rows: list[Row]) -> list[Row]:
        f = self.cfg.filters
        res = self.stage("respond", 0, rows, [self.conv(r, False) for r in rows], [r.params for r in rows],
                         self.cfg.sampling.max_tokens.respond)
        live = []
        for row, g in res:
            row.original = g.text.strip()
            why = quality.check_text(row.original, g.finish_reason, "original", f.min_chars, f.drop_truncated)
            if why:
                self.reject(row, "respond", why)
                continue
            row.history = [{"role": "assistant", "content": row.original}]
            live.append(row)
        return live

    def _params(self, row: Row, stage: str, rnd: int, max_tokens: int) -> Params:
        s = self.cfg.sampling
        return Params(s.critique_temperature, s.critique_top_p, max_tokens, _seed(self.cfg.seed, row.id, stage, rnd))

    def critique(self, rows: list[Row], rnd: int) -> list[Row]:
        mt = self.cfg.sampling.max_tokens.critique
        for r in rows:
            r.history.append(turns.critique_turn(self.const, r.principles[rnd - 1], rnd))
        res = self.stage("critique", rnd, rows, [self.conv(r, True) for r in rows],
                         [self._params(r, "critique", rnd, mt) for r in rows], mt)
        live = []
        for row, g in res:
            text = g.text.strip()
            if len(text) < self.cfg.filters.min_chars:
                self.reject(row, f"critique r{rnd}", "empty_critique")
                continue
            row.critiques.append(text)
            row.history.append({"role": "assistant", "content": text})
            live.append(row)
        return live

    def revise(self, rows: list[Row], rnd: int) -> list[Row]:
        f, mt = self.cfg.filters, self.cfg.sampling.max_tokens.revise
        for r in rows:
            r.history.append(turns.revision_turn(self.const, r.principles[rnd - 1], rnd))
        res = self.stage("revise", rnd, rows, [self.conv(r, True) for r in rows],
                         [self._params(r, "revise", rnd, mt) for r in rows], mt)
        live = []
        for row, g in res:
            text, stripped = quality.strip_preface(g.text) if f.strip_preface else (g.text.strip(), False)
            why = quality.check_text(text, g.finish_reason, "revision", f.min_chars, f.drop_truncated)
            if why == "empty_revision" and (stripped or quality.PREFACE.match(g.text.strip())):
                why = "revision_preface"  # nothing but a preface: talked about revising instead of revising
            elif not why and not f.strip_preface and quality.PREFACE.match(text):
                why = "revision_preface"
            why = why or quality.check_revision(text, row.critiques[-1], f.max_critique_similarity)
            if stripped:
                row.flags.append(f"preface_stripped_r{rnd}")
            row.revisions.append(text)
            if why:
                self.reject(row, f"revise r{rnd}", why)
                continue
            row.history.append({"role": "assistant", "content": text})
            live.append(row)
        return live

    def pair(self, rows: list[Row]) -> list[Row]:
        kept = []
        for row in rows:
            why, row.similarity = quality.check_pair(row.revisions[-1], row.original, self.cfg.filters.max_similarity)
            if why:
                self.reject(row, "pair", why)
            else:
                kept.append(row)
        return kept


def run(cfg: RunConfig, out_dir: Path, backend: Backend | None = None, tracker: Tracker | None = None) -> dict:
    """Run the whole job into out_dir. Pass `backend` to reuse a loaded engine (tests, sweeps in one process)."""
    t0 = time.perf_counter()
    const = constitution_mod.load(cfg.constitution.name, cfg.constitution.path)
    p = cfg.prompts
    recs = prompts_mod.load(p.name, p.path, p.dataset, p.split, p.column, p.id_column, p.domain_column, cfg.limit)
    tracker = tracker or Tracker()
    fingerprint.check(out_dir, cfg, const)
    own = backend is None
    if own:
        # the fake engine loads nothing, so it needs no checkpoint (and no conversion)
        path = (cfg.model.path or cfg.model.name) if cfg.backend.kind == "fake" else \
            resolve(cfg.model.source, cfg.model.path, cfg.model.cache_dir)
        t = time.perf_counter()
        tracker.console.print(f"[bold]engine[/]: {cfg.backend.kind} loading {cfg.model.name} ...")
        backend = make_backend(cfg.backend.kind, path, cfg.model.name, cfg.backend.options(cfg.model, cfg.seed))
        tracker.console.print(f"[bold]engine[/]: up in {time.perf_counter() - t:.0f}s")
    ledger = Ledger(out_dir / "work" / "generations.jsonl")
    try:
        job = Run(cfg, backend, const, tracker, ledger)
        rows = build_rows(cfg, recs, const)
        kept: list[Row] = []
        size = cfg.chunk_size or len(rows) or 1
        # Each chunk goes through every stage as one batch per stage; the default (null) is the whole run.
        for start in range(0, len(rows), size):
            live = job.respond(rows[start:start + size])
            for rnd in range(1, cfg.rounds + 1):
                live = job.critique(live, rnd)
                live = job.revise(live, rnd)
            kept += job.pair(live)
    finally:
        ledger.close()
        if own:
            backend.close()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary = store.write(out_dir, cfg, const, rows, kept, job.rejected, created)
    summary.update(prompts=len(recs), seconds=round(time.perf_counter() - t0, 1),
                   stages={k: vars(v) for k, v in tracker.stages.items()})
    store.write_summary(out_dir, summary)
    # the card uses the constitution this run generated with (not a re-read file that may have changed since)
    report.write_card(out_dir, summary, cfg.model_dump(mode="json"), const)
    return summary
