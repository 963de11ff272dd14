"""Row and the stage API: a row per (prompt, sample), and what the stages share for one run (Run).

Below the orchestrator: stages.py programs against Run (`job`), flow.py schedules the stages, pipeline.py
runs them from config to files.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from . import checks as checks_mod
from . import models, quality, stages as stages_mod, store, turns
from .backends import Backend, Conversation, Generation, Params, seed_of
from .config import RunConfig
from .ledger import Ledger, request_key
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
    original_tokens: int = 0           # the original's generated tokens (revise_max_scale sizes revisions from it)
    critiques: list[str] = field(default_factory=list)
    revisions: list[str] = field(default_factory=list)  # accepted revisions, one per round that revised
    draft: str | None = None           # the last revision generated (accepted or not): rejected.jsonl shows it
    gate: list[dict] = field(default_factory=list)  # per gated round: principle, P(YES), answer
    open: bool = True                  # more rounds may revise; False once a round kept the last revision
    flags: list[str] = field(default_factory=list)
    reason: str | None = None          # why the row was dropped
    end: str | None = None             # why the row ended early without a pair ("no_violation")
    stage: str | None = None
    similarity: float | None = None
    judge: dict | None = None          # {outcome, verdicts per order, model, action} when the judge ran
    reward: dict | None = None         # {chosen, rejected, margin, model} when a reward model scored the pair
    swapped: bool = False              # the judge preferred the original and on_disagrees=swap
    done_at: str | None = None         # when its last generation finished (judge verdicts aside): created_at
    trace: list[dict] = field(default_factory=list)
    # the checks that apply to this row's prompt: (principle id, or "prompt" for the row's own, check object)
    applicable: list = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)  # per check: id, principle, kind, original/revision pass
    now: dict = field(default_factory=dict)            # check id -> passes, on the row's current answer
    # best-of-N samples of this round that passed every inline check, in index order (the first is the revision
    # taken), and the check results before it was noted: Inspect judges them all, and on a refusal puts these back
    candidates: list = field(default_factory=list)
    before: dict | None = None

    def revised(self) -> list[str]:
        """The principle of each round that revised or tried to (its revision kept, or failed a check), not of a
        round whose gate said NO (nothing was revised there): principle_ids, the judge's rubric, the card's
        principle counts and the review's rounds follow it."""
        no = {g["round"] for g in self.gate if g["answer"] == "NO"}
        return [p for r, p in enumerate(self.principles[:len(self.critiques)], 1) if r not in no]


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
                            max_tokens=cfg.sampling.max_tokens.respond, seed=seed_of(cfg.seed, rec.id, s, "respond"))
            # targeted choice picks each round's principle once the answer's checks are in (stages.Choose)
            pre = [] if stages_mod.targeted(cfg, const) else const.sample(cfg.rounds, cfg.seed, rec.id, s)
            mine = checks_mod.applicable(const, rec) if cfg.principles.checks else []
            rows.append(Row(f"{rec.id}-s{s}", rec, s, params, pre, applicable=mine))
    return rows


class Run:
    """What the stages share for one run: config, constitution, filters, ledger (a row carries its own outcome).
    The stage objects (stages.py) build requests and accept generations; flow.py schedules them."""

    def __init__(self, cfg: RunConfig, backend: Backend, const, tracker: Tracker, ledger: Ledger,
                 model_id: str | None = None):
        self.cfg, self.backend, self.const, self.tracker, self.ledger = cfg, backend, const, tracker, ledger
        # the model part of every ledger key: what generates (models.identity, and the fake engine's script), never
        # the display name; judge requests on a separate judge model take that model's
        mid = model_id or models.identity(cfg.model.source, cfg.model.path)
        self.key_model = models.engine_identity(mid, cfg.backend)
        jm = cfg.judge.model if cfg.judge.enabled else None
        self.key_judge = (models.engine_identity(models.identity(jm.source, jm.path), cfg.backend) if jm is not None
                          else self.key_model)
        self.judge_started = False  # a separate judge engine started (summary.engine_started)
        self.inspector: Backend | None = None  # the judge checks' engine when not the generator's (judge_server)
        self.style = cfg.revision_style or const.revision_style
        self.fs = turns.few_shot_turns(const, cfg.few_shot, self.style)
        self.filters = quality.Filters(cfg.filters, const)
        self.stages = stages_mod.build(cfg, const)

    def seed(self, *key) -> int:
        return seed_of(self.cfg.seed, *key)

    def engine_for(self, stage, backend):
        """Where a stage's requests go: the judge checks (inspect) to the judge server when one is set up
        (judge_server), everything else to `backend`."""
        return self.inspector if stage.name == "inspect" and self.inspector is not None else backend

    def reject(self, row: Row, stage: str, reason: str) -> bool:
        """Drop the row with its reason (written to rejected.jsonl). Returns False: the row leaves the flow."""
        if row.reason is None:
            row.reason, row.stage = reason, stage
        return False

    def end(self, row: Row, stage: str, why: str) -> bool:
        """End the row early without a pair (not a filter failure: the gate found nothing to fix)."""
        row.end, row.stage = why, stage
        return False

    def fail(self, row: Row, stage, why: str, where: str | None = None) -> bool:
        """A check failed at this stage. In a later round the last accepted revision stays the answer (flag
        round_failed_rN, the row goes on to pair); in round 1 the row is dropped with the reason."""
        if stage.rnd > 1 and row.revisions:
            row.open = False
            row.flags.append(f"round_failed_r{stage.rnd}")
            row.trace.append({"stage": stage.name, "round": stage.rnd, "failed": why})
            return True
        return self.reject(row, where or stage.label, why)

    def overflow(self, row: Row, stage, n: int) -> bool:
        why = "prompt_too_long" if stage.name == "respond" else "context_overflow"
        row.trace.append({"stage": stage.name, "round": stage.rnd, "skipped": why, "prompt_tokens": n})
        return self.fail(row, stage, why, where=stage.name)

    # -- checks: run them, choose by them, judge a revision by them ---------------------------------------------

    def inline(self, row: Row, text: str) -> dict[str, bool]:
        """Every applicable check that needs no engine, on one answer: check id -> passes."""
        ctx = checks_mod.Context.of(row.prompt)
        return {c.id: c.passes(text, ctx) for _, c in row.applicable if not c.needs_engine}

    def prime(self, stage, done: list) -> None:
        """Before a stage accepts a batch of (row, generations): score their answers' classifier checks in one
        model call per classifier, not one per answer (the accept that follows reads the scores)."""
        text = getattr(stage, "checked_text", None)
        if text is None:
            return
        checks_mod.prime([(c, text(self, g)) for row, gens in done for g in gens
                          for _, c in row.applicable if not c.needs_engine])

    def note(self, row: Row, answer: str, res: dict[str, bool]) -> None:
        """Record results on the row's current answer ("original" or "revision")."""
        if not row.checks:
            row.checks = [{"id": c.id, "principle": pid, "kind": c.kind, "original": None, "revision": None}
                          for pid, c in row.applicable]
        for r in row.checks:
            if r["id"] in res:
                r[answer] = res[r["id"]]
        row.now.update(res)

    def principle_fails(self, row: Row, pid: str) -> bool | None:
        """Does the current answer fail one of the principle's checks? None: the principle has none for this row."""
        mine = [c.id for p, c in row.applicable if p == pid]
        if not mine:
            return None
        return any(row.now.get(c) is False for c in mine)

    def choose(self, row: Row, rnd: int) -> str | None:
        """Targeted choice of round `rnd`'s principle (weighted, seeded): among the unused principles the current
        answer fails, else among the unused ones without checks for this prompt; None when neither is left."""
        used = set(row.principles)
        free = [p for p in self.const.principles if p.id not in used]
        failing = [p for p in free if self.principle_fails(row, p.id)]
        pool = failing or [p for p in free if self.principle_fails(row, p.id) is None]
        if not pool:
            return None
        rng = random.Random(json.dumps([self.cfg.seed, "choose", row.prompt.id, row.sample, rnd]))
        return rng.choices(pool, weights=[p.weight for p in pool])[0].id

    def verdict(self, row: Row, pid: str, res: dict[str, bool]) -> str | None:
        """A revision's checks: it must pass its principle's (still_violates) and fail none the current answer
        passes (new_violation)."""
        if any(not res[c.id] for p, c in row.applicable if p == pid and c.id in res):
            return "still_violates"
        if any(ok is False and row.now.get(cid) is True for cid, ok in res.items()):
            return "new_violation"
        return None

    def conv(self, row: Row, with_few_shot: bool) -> Conversation:
        return turns.head(row.prompt.system, self.fs if with_few_shot else [], row.prompt.prompt,
                          row.prompt.turns()) + row.history

    def record(self, row: Row, stage, req, g: Generation) -> None:
        """The row's trace entry for one request (the few-shot prefix is counted, not copied)."""
        skip = len(self.fs) if stage.few_shot else 0
        head = 1 if row.prompt.system and skip else 0
        conv, p = req.conv, req.params
        if stage.name != "judge" and g.done_at and (row.done_at is None or g.done_at > row.done_at):
            row.done_at = g.done_at  # a judgement of the data is not when the data was made
        row.trace.append({"stage": stage.name, "round": stage.rnd, **({"tag": req.tag} if req.tag else {}),
                          "input": conv[:head] + conv[head + skip:],
                          "few_shot_turns": skip, "output": g.text, "finish_reason": g.finish_reason,
                          "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                          "params": {"temperature": p.temperature, "top_p": p.top_p, "seed": p.seed,
                                     "max_tokens": p.max_tokens},
                          **({"probs": g.probs} if g.probs else {})})

    def lookup(self, row: Row, stage, reqs: list, backend: Backend):
        """Ledger keys and generations already finished (a resumed or re-filtered run) for a row's requests;
        the context check for the rest (which is what opens a lazy engine). None when a request does not fit:
        the row failed (or, in a later round, kept its last revision: row.reason stays None)."""
        mid = self.key_judge if stage.name == "judge" or self.engine_for(stage, None) is not None else self.key_model
        keys = [request_key(mid, r.conv, r.params) for r in reqs]
        gens = [self.ledger.get(k) for k in keys]
        miss = [j for j, g in enumerate(gens) if g is None]
        if miss:
            lens = backend.count_tokens([reqs[j].conv for j in miss])
            mt = max(reqs[j].params.max_tokens for j in miss)
            if max(lens) + mt > backend.max_model_len:
                self.overflow(row, stage, max(lens))
                return None
        return keys, gens

    def reward(self, rows: list[Row]) -> list[Row]:
        """Score chosen and rejected with a reward model; a margin under the threshold is flagged or dropped."""
        from . import reward as reward_mod

        rc = self.cfg.reward
        with self.tracker.stage("reward", len(rows), generating=False, rate=False) as on_done:
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
