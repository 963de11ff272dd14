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
from . import fingerprint, flow, judge as judge_mod, quality, report, store, turns
from .backends import Backend, Conversation, Generation, Params, make_backend
from .config import RunConfig
from .ledger import Ledger, request_key
from .models import resolve
from . import progress
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
    judge: dict | None = None          # {outcome, verdicts per order, model, action} when the judge ran
    reward: dict | None = None         # {chosen, rejected, margin, model} when a reward model scored the pair
    swapped: bool = False              # the judge preferred the original and on_disagrees=swap
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
        if row.reason is not None:
            return  # already rejected (a judged row appears once per order)
        row.reason, row.stage = reason, stage
        self.rejected.append(row)

    def conv(self, row: Row, with_few_shot: bool) -> Conversation:
        return turns.head(row.prompt.system, self.fs if with_few_shot else [], row.prompt.prompt) + row.history

    def stage(self, name: str, rnd: int, rows: list[Row], convs: list[Conversation], params: list[Params],
              max_tokens: int, backend: Backend | None = None,
              tags: list[str] | None = None) -> list[tuple[int, Row, Generation]]:
        """Context check, then one batched engine call for the stage; returns (input index, row, generation)
        for the requests that fit the context. `tags` label requests in the trace (the judge's order)."""
        backend = backend or self.backend
        lens = backend.count_tokens(convs)
        live = []
        for i, (row, conv, p, n) in enumerate(zip(rows, convs, params, lens)):
            if n + max_tokens > backend.max_model_len:
                self.overflow(row, name, rnd, n)
            else:
                live.append((row, conv, p, i))
        label = progress.label(name, rnd)
        # Reuse every generation the ledger already holds (a resumed run); send only the rest, as one batch.
        keys = [request_key(backend.model, c, p) for _, c, p, _ in live]
        gens: list[Generation | None] = [self.ledger.get(k) for k in keys]
        todo = [i for i, g in enumerate(gens) if g is None]
        if len(todo) < len(live):
            self.tracker.console.print(f"{label}: {len(live) - len(todo)} rows reused from an earlier run")
        with self.tracker.stage(label, len(todo)) as on_done:
            def commit(j: int, g: Generation) -> None:
                self.ledger.add(keys[todo[j]], g)
                on_done(j, g)
            if todo:
                new = backend.generate([live[i][1] for i in todo], [live[i][2] for i in todo], commit)
                for i, g in zip(todo, new):
                    gens[i] = g
        self.ledger.sync()
        out = []
        for (row, conv, p, i), g in zip(live, gens):
            self.record(row, name, rnd, conv, p, g, tags[i] if tags else None)
            out.append((i, row, g))
        return out

    def overflow(self, row: Row, name: str, rnd: int, n: int) -> None:
        why = "prompt_too_long" if name == "respond" else "context_overflow"
        row.trace.append({"stage": name, "round": rnd, "skipped": why, "prompt_tokens": n})
        self.reject(row, name, why)

    def record(self, row: Row, name: str, rnd: int, conv: Conversation, p: Params, g: Generation,
               tag: str | None = None) -> None:
        """The row's trace entry for one request (the few-shot prefix is counted, not copied)."""
        skip = len(self.fs) if name in ("critique", "revise") else 0
        head = 1 if row.prompt.system and name != "judge" else 0
        row.trace.append({"stage": name, "round": rnd, **({"tag": tag} if tag else {}),
                          "input": conv[:head] + conv[head + skip:],
                          "few_shot_turns": skip, "output": g.text, "finish_reason": g.finish_reason,
                          "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                          "params": {"temperature": p.temperature, "top_p": p.top_p, "seed": p.seed,
                                     "max_tokens": p.max_tokens}})

    # Per-row steps, shared by the staged schedule (run_stage) and the pipelined one (flow.py).
    def request(self, row: Row, name: str, rnd: int) -> tuple[Conversation, Params, int]:
        """The row's request for a stage: (conversation, sampling, max tokens). Extends the row's history."""
        mt = self.cfg.sampling.max_tokens
        if name == "respond":
            return self.conv(row, False), row.params, mt.respond
        turn = turns.critique_turn if name == "critique" else turns.revision_turn
        row.history.append(turn(self.const, row.principles[rnd - 1], rnd))
        m = mt.critique if name == "critique" else mt.revise
        return self.conv(row, True), self._params(row, name, rnd, m), m

    def accept(self, row: Row, name: str, rnd: int, g: Generation) -> bool:
        """Take a stage's output into the row; False (and the row rejected with a reason) when it fails a check."""
        f = self.cfg.filters
        if name == "respond":
            row.original = g.text.strip()
            why = quality.check_text(row.original, g.finish_reason, "original", f.min_chars, f.drop_truncated)
            if why:
                self.reject(row, "respond", why)
                return False
            row.history = [{"role": "assistant", "content": row.original}]
            return True
        if name == "critique":
            text = g.text.strip()
            if len(text) < f.min_chars:
                self.reject(row, f"critique r{rnd}", "empty_critique")
                return False
            row.critiques.append(text)
            row.history.append({"role": "assistant", "content": text})
            return True
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
            return False
        row.history.append({"role": "assistant", "content": text})
        return True

    def run_stage(self, name: str, rnd: int, rows: list[Row]) -> list[Row]:
        """Staged schedule: every live row's request for this stage in one engine batch."""
        reqs = [self.request(r, name, rnd) for r in rows]
        if not reqs:
            return []
        res = self.stage(name, rnd, rows, [c for c, _, _ in reqs], [p for _, p, _ in reqs], reqs[0][2])
        return [row for _, row, g in res if self.accept(row, name, rnd, g)]

    def _params(self, row: Row, stage: str, rnd: int, max_tokens: int) -> Params:
        s = self.cfg.sampling
        return Params(s.critique_temperature, s.critique_top_p, max_tokens, _seed(self.cfg.seed, row.id, stage, rnd))

    def pair_one(self, row: Row) -> bool:
        why, row.similarity = quality.check_pair(row.revisions[-1], row.original, self.cfg.filters.max_similarity)
        if why:
            self.reject(row, "pair", why)
        return not why

    def pair(self, rows: list[Row]) -> list[Row]:
        return [row for row in rows if self.pair_one(row)]

    def judge(self, rows: list[Row], backend: Backend) -> list[Row]:
        """Both orders of every kept pair in one engine batch; outcome and action per pair."""
        jc = self.cfg.judge
        pairs = [(r, o) for o in judge_mod.ORDERS for r in rows]
        convs = [judge_mod.conversation(self.const, r, o, jc.rubric) for r, o in pairs]
        params = [Params(jc.temperature, 1.0, jc.max_tokens, _seed(self.cfg.seed, r.id, "judge", o),
                         judge_mod.CHOICES) for r, o in pairs]
        res = self.stage("judge", 0, [r for r, _ in pairs], convs, params, jc.max_tokens, backend,
                         tags=[o for _, o in pairs])
        verdicts: dict[str, dict] = {}
        for i, row, g in res:
            verdicts.setdefault(row.id, {})[pairs[i][1]] = g.text.strip()
        kept = []
        for row in rows:
            if row.reason is not None:  # a judge request did not fit the judge's context
                continue
            v = verdicts[row.id]
            out = judge_mod.outcome(v["original_first"], v["revision_first"])
            act = judge_mod.action(out, jc)
            row.judge = {"outcome": out, "verdicts": v, "model": backend.model, "action": act}
            if act == "drop":
                self.reject(row, "judge", out)
                continue
            if act == "swap":
                row.swapped = True
                row.flags.append("judge_swapped")
            elif out != "judge_agrees":
                row.flags.append(out if out.startswith("judge_") else f"judge_{out}")
            kept.append(row)
        return kept

    def reward(self, rows: list[Row]) -> list[Row]:
        """Score chosen and rejected with a reward model; a margin under the threshold is flagged or dropped."""
        from . import reward as reward_mod

        rc = self.cfg.reward
        with self.tracker.stage("reward", len(rows), generating=False) as on_done:
            scores = reward_mod.score(rc.model, [store.pair_messages(r) for r in rows], rc.batch_size,
                                      rc.max_length, rc.dtype, rc.device, rc.trust_remote_code, on_done)
        kept = []
        for row, (sc, sr) in zip(rows, scores):
            row.reward = {"chosen": round(sc, 4), "rejected": round(sr, 4), "margin": round(sc - sr, 4),
                          "model": rc.model}
            if sc - sr < rc.threshold:
                if rc.action == "drop":
                    self.reject(row, "reward", "reward_margin_low")
                    continue
                row.flags.append("reward_margin_low")
            kept.append(row)
        return kept


def _judge(job: Run, cfg: RunConfig, kept: list[Row], backend: Backend, own: bool, tracker: Tracker) -> list[Row]:
    """Judge with the generating engine, or close it and load the judge model (two engines rarely fit)."""
    jm = cfg.judge.model
    if jm is None:
        return job.judge(kept, backend)
    if own:
        backend.close()
    path = resolve(jm.source, jm.path, jm.cache_dir)
    tracker.console.print(f"[bold]engine[/]: {cfg.backend.kind} loading judge {jm.name} ...")
    judge_backend = make_backend(cfg.backend.kind, path, jm.name, cfg.backend.options(jm, cfg.seed))
    try:
        return job.judge(kept, judge_backend)
    finally:
        judge_backend.close()


def open_backend(cfg: RunConfig, tracker: Tracker) -> Backend:
    """Load the configured engine (or connect to the endpoint) for the generating model."""
    # the fake engine loads nothing, so it needs no checkpoint (and no conversion); nor does a server's client
    # that counts no tokens
    remote = cfg.backend.kind == "fake" or (cfg.backend.kind == "openai" and cfg.backend.count_tokens == "none")
    path = (cfg.model.path or cfg.model.name) if remote else resolve(cfg.model.source, cfg.model.path, cfg.model.cache_dir)
    t = time.perf_counter()
    tracker.console.print(f"[bold]engine[/]: {cfg.backend.kind} loading {cfg.model.name} ...")
    backend = make_backend(cfg.backend.kind, path, cfg.model.name, cfg.backend.options(cfg.model, cfg.seed))
    tracker.console.print(f"[bold]engine[/]: up in {time.perf_counter() - t:.0f}s")
    return backend


def generate(job: Run, rows: list[Row]) -> list[Row]:
    """respond -> (critique -> revise) x rounds -> pair on job.backend; returns the kept rows. Each chunk goes
    through every stage; the default chunk (null) is the whole run. Also what each executor=ray replica runs."""
    cfg, kept = job.cfg, []
    size = cfg.chunk_size or len(rows) or 1
    pipelined = cfg.pipelined and hasattr(job.backend, "submit")
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        if pipelined:
            kept += flow.pipelined(job, chunk)   # each row moves on as soon as its request finishes
            continue
        live = job.run_stage("respond", 0, chunk)  # one engine batch per stage, a barrier between stages
        for rnd in range(1, cfg.rounds + 1):
            live = job.run_stage("critique", rnd, live)
            live = job.run_stage("revise", rnd, live)
        kept += job.pair(live)
    return kept


def run(cfg: RunConfig, out_dir: Path, backend: Backend | None = None, tracker: Tracker | None = None) -> dict:
    """Run the whole job into out_dir. Pass `backend` to reuse a loaded engine (tests, sweeps in one process)."""
    t0 = time.perf_counter()
    const = constitution_mod.load(cfg.constitution.name, cfg.constitution.path)
    p = cfg.prompts
    recs = prompts_mod.load(p.name, p.path, p.dataset, p.split, p.column, p.id_column, p.domain_column, cfg.limit)
    recs = prompts_mod.shard(recs, cfg.shard.index, cfg.shard.count)
    tracker = tracker or Tracker()
    fingerprint.check(out_dir, cfg, const)
    if cfg.reward.model:
        from . import reward as reward_mod
        reward_mod.check(cfg.reward.model, cfg.reward.trust_remote_code)
    rows = build_rows(cfg, recs, const)
    if cfg.executor.kind == "ray" and backend is None:
        from .executors import ray as ray_exec
        # every replica runs generate() (and the judge) on its batches; rows come back with their results
        rows = ray_exec.generate(cfg, out_dir, rows, const, tracker)
        job = Run(cfg, None, const, tracker, None)
        job.rejected = [r for r in rows if r.reason is not None]
        kept = [r for r in rows if r.reason is None]
    else:
        own = backend is None
        if own:
            backend = open_backend(cfg, tracker)
        ledger = Ledger(out_dir / "work" / "generations.jsonl")
        try:
            job = Run(cfg, backend, const, tracker, ledger)
            kept = generate(job, rows)
            if cfg.judge.enabled and kept:
                kept = _judge(job, cfg, kept, backend, own, tracker)
        finally:
            ledger.close()
            if getattr(backend, "retries", 0):  # an endpoint that failed now and then (429, 5xx, restarts)
                tracker.console.print(f"[bold]backend[/]: {backend.retries} request tries failed and were retried")
            if own and backend is not None:
                backend.close()
    if cfg.reward.model and kept:
        kept = job.reward(kept)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    pos = {r.id: i for i, r in enumerate(rows)}  # files list rows in prompt order whatever order they finished in
    kept.sort(key=lambda r: pos[r.id])
    job.rejected.sort(key=lambda r: pos[r.id])
    rows.sort(key=lambda r: pos[r.id])
    summary = store.write(out_dir, cfg, const, rows, kept, job.rejected, created)
    summary.update(prompts=len(recs), seconds=round(time.perf_counter() - t0, 1),
                   generation_seconds=round(tracker.gen_seconds, 1),
                   stages={k: vars(v) for k, v in tracker.stages.items()})
    store.write_summary(out_dir, summary)
    # card, plots and statistics come from the files just written (constitution.json is the one used here)
    return report.build(out_dir)
