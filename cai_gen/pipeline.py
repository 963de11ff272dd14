"""A run: rows, what the stages share (Run), and the run from config to files.

respond -> (critique -> gate -> revise) x rounds -> pair [-> judge] [-> reward] -> write. The stages are objects
(stages.py), the schedules run a list of them (flow.py). Rows that fail a check leave the flow with a reason
(rejected.jsonl), rows the gate finds nothing wrong with end early (no_violation.jsonl): never silently lost.
"""
from __future__ import annotations

import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import constitution as constitution_mod
from . import prompts as prompts_mod
from . import checks as checks_mod
from . import enginelog, fingerprint, flow, models, quality, report, stages as stages_mod, store, turns
from .backends import Backend, Conversation, Generation, Lazy, Params, make_backend, queued, seed_of
from .config import RunConfig
from .ledger import Ledger, request_key
from .lock import RunLock
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


def schedule(job: Run, rows: list[Row], stage_list: list, backend: Backend) -> list[Row]:
    """Run rows through a list of stages on one backend: pipelined where the backend takes queued requests
    (and cfg.pipelined), else one engine batch per stage. Returns the rows that came through."""
    if job.cfg.pipelined and queued(backend):
        return flow.pipelined(job, rows, stage_list, backend)
    return flow.staged(job, rows, stage_list, backend)


def judge(job: Run, rows: list[Row], backend: Backend) -> list[Row]:
    """The judge pass over kept pairs (both orders of every pair) on the generating or the judge engine."""
    return schedule(job, rows, [stages_mod.Judge(backend.model)], backend)


def _judge(job: Run, cfg: RunConfig, kept: list[Row], backend: Backend, own: bool, tracker: Tracker) -> list[Row]:
    """Judge with the generating engine, or close it (when this run opened it: a caller's engine stays theirs)
    and load the judge model (two engines rarely fit); the judge engine, too, opens only when a verdict is
    missing from the ledger."""
    jm = cfg.judge.model
    if jm is None:
        return judge(job, kept, backend)
    if own:
        backend.close()
    if job.inspector is not None:  # the judge server the judge checks already ask: one client, not two
        return judge(job, kept, job.inspector)

    def load() -> Backend:
        path = resolve(jm.source, jm.path, jm.cache_dir)
        tracker.console.print(f"[bold]engine[/]: {cfg.backend.kind} loading judge {jm.name} ...")
        return make_backend(cfg.backend.kind, path, jm.name, judge_options(cfg))

    judge_backend = Lazy(jm.name, cfg.backend.kind != "transformers", load)
    try:
        return judge(job, kept, judge_backend)
    finally:
        job.judge_started = judge_backend.opened
        judge_backend.close()


def judge_server(cfg: RunConfig, const, tracker: Tracker) -> Backend | None:
    """The judge checks' engine when a separate judge model is served (backend=openai with judge.model): a
    client to the judge's endpoint beside the generator's, opened at its first request, so the checks steer
    each row with the judge's P(YES), not the generator's. With a local engine the judge checks run on the
    generating model (two local engines rarely fit), and the run says so once."""
    jm = cfg.judge.model if cfg.judge.enabled else None
    if jm is None or not any(c.needs_engine for p in const.principles for c in p.checks):
        return None
    if cfg.backend.kind != "openai":
        tracker.console.print(f"[bold]checks[/]: judge checks run on the generating model; judge.model "
                              f"({jm.name}) judges them only over backend=openai (a judge server beside the "
                              "generator's), and judges the pairs after generation")
        return None
    path = resolve(jm.source, jm.path, jm.cache_dir)  # the judge's tokenizer counts its context, as in _judge
    return Lazy(jm.name, True, lambda: make_backend("openai", path, jm.name, judge_options(cfg)))


def judge_options(cfg: RunConfig) -> dict:
    """The judge engine's options: the backend's, for the judge model; over openai its own endpoint and name
    (the generator's served_model and base_url are the generator's, not the judge's)."""
    j, opts = cfg.judge, cfg.backend.options(cfg.judge.model, cfg.seed)
    if cfg.backend.kind == "openai":
        opts |= dict(base_url=j.base_url or cfg.backend.base_url, served_model=j.served_model or j.model.name,
                     max_model_len=j.model.max_model_len)
    return opts


def preflight(cfg: RunConfig, own_engine: bool) -> None:
    """Before any generation: every model this run will load exists, and a judge endpoint serves the judge.
    A typo then costs seconds, not a finished generation pass (the judge loads only after it)."""
    if own_engine and cfg.backend.kind in ("vllm", "transformers"):
        models.check(cfg.model.source, cfg.model.path, "model")
    jm = cfg.judge.model if cfg.judge.enabled else None
    if jm is None:
        return
    if cfg.backend.kind == "openai":
        from .backends.openai import check_served

        o = judge_options(cfg)
        check_served(o["base_url"], o["served_model"], cfg.backend.api_key_env, "judge")
    elif cfg.backend.kind != "fake":
        models.check(jm.source, jm.path, "judge.model")


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


CHUNK_ROWS = 4_000  # rows per written chunk when chunk_size is null: big runs stay flat in memory, small ones are one


def generate(job: Run, rows: list[Row]) -> list[Row]:
    """Every chunk of rows through the generation stages (job.stages) on job.backend; returns the kept rows.
    The default chunk (null) is the whole run. Also what each executor=ray replica runs."""
    size = job.cfg.chunk_size or len(rows) or 1
    kept = []
    for start in range(0, len(rows), size):
        kept += schedule(job, rows[start:start + size], job.stages, job.backend)
    return kept


def batch(cfg: RunConfig, backend: Backend, const, tracker: Tracker, ledger: Ledger, rows: list[Row]) -> None:
    """One executor=ray replica's batch, with the local run's code: the stages, then the judge when judge=self.
    The rows carry their results back (ray_exec.Replica calls this; the executor does not import the pipeline)."""
    job = Run(cfg, backend, const, tracker, ledger)
    kept = generate(job, rows)
    if cfg.judge.enabled and kept:
        judge(job, kept, backend)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's malloc_trim; a no-op elsewhere): the
    datasets copies are built by Arrow's own allocator, which cannot reuse what Python's heap keeps."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def emit(writer: store.Writer, job: Run, rows: list[Row], kept: list[Row]) -> None:
    """Write one chunk: its kept pairs (scored first when a reward model is set), the rows dropped with a reason
    and those ended without a pair. Each row carries its own outcome (reason, end), so what is written is read
    off the chunk's rows: the Run keeps no per-chunk lists to hand over and reset."""
    if job.cfg.reward.model and kept:
        kept = job.reward(kept)
    pos = {r.id: i for i, r in enumerate(rows)}  # files list rows in prompt order whatever order they finished
    kept = sorted(kept, key=lambda r: pos[r.id])
    writer.add(rows, kept, [r for r in rows if r.reason is not None], [r for r in rows if r.end is not None],
               datetime.now(timezone.utc).isoformat(timespec="seconds"))


def run(cfg: RunConfig, out_dir: Path, backend: Backend | None = None, tracker: Tracker | None = None) -> dict:
    """Run the whole job into out_dir. Pass `backend` to reuse a loaded engine (tests, sweeps in one process).
    One run per dir at a time: a second process gets one line naming the holder (cai_gen/lock.py)."""
    with RunLock(out_dir):
        return _run(cfg, out_dir, backend, tracker)


def _run(cfg: RunConfig, out_dir: Path, backend: Backend | None, tracker: Tracker | None) -> dict:
    t0 = time.perf_counter()
    tracker = tracker or Tracker()
    full, const, recs, dups = inputs(cfg, tracker)
    model_id = models.identity(cfg.model.source, cfg.model.path)  # once per run: it reads the model dir's files
    fingerprint.check(out_dir, cfg, const, model_id)
    preflight(cfg, own_engine=backend is None)
    if cfg.reward.model:
        from . import reward as reward_mod
        reward_mod.check(cfg.reward.model, cfg.reward.trust_remote_code)
    writer = store.Writer(out_dir, cfg, full)
    if cfg.executor.kind == "ray" and backend is None:
        started = None
        run_ray(cfg, out_dir, recs, const, tracker, writer, model_id)
    else:
        started = run_local(cfg, out_dir, recs, const, backend, tracker, writer, model_id)
    n_prompts = len(recs)
    # what generation held (the ledger's index, the prompts, the last chunk's rows) was released with the calls
    # above; the prompts go too before the files are joined and the datasets copies built, so their peak does not
    # stack on it (bench/scale.py)
    recs = None  # noqa: F841
    release_memory()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # output.length_balance=match: the fewest pairs (seeded) dropped so chosen is the longer answer in 50% +- 5,
    # decided once over the whole run's pairs (balancing each chunk on its own drops pairs the run would keep)
    drop = quality.length_balance(writer.pairs, cfg.seed) if cfg.output.length_balance == "match" else set()
    summary = writer.finish(created, drop)
    if writer.review_dropped:
        tracker.console.print(f"[bold]reviewed/[/]: removed (built on the pairs before this rerun); "
                              f"`python -m cai_gen.review merge {out_dir}` rebuilds it from the verdicts")
    summary.update(prompts=n_prompts, duplicate_prompts=dups, seconds=round(time.perf_counter() - t0, 1),
                   generation_seconds=round(tracker.gen_seconds, 1), engine_started=started,
                   stages={k: vars(v) for k, v in tracker.stages.items()})
    store.write_summary(out_dir, summary)
    # card, plots and statistics come from the files just written (constitution.json is the one used here)
    return report.build(out_dir)


def inputs(cfg: RunConfig, tracker: Tracker):
    """The run's constitution (as written to constitution.json, and as the stages use it) and its prompts (this
    shard's), with the count of exact duplicates dropped."""
    const = constitution_mod.load(cfg.constitution.name, cfg.constitution.path, cfg.include_path)
    p = cfg.prompts
    recs = prompts_mod.load(p.name, p.path, p.dataset, p.split, p.column, p.id_column, p.domain_column, cfg.limit,
                            cfg.include_path, messages_column=p.messages_column, config=p.config,
                            revision=p.revision, data_files=p.data_files, keep_duplicates=p.keep_duplicates,
                            kind=p.kind)
    dups = recs.duplicates
    recs = prompts_mod.shard(recs, cfg.shard.index, cfg.shard.count)
    if dups:
        tracker.console.print(f"[bold]prompts[/]: {dups} exact duplicate prompts dropped "
                              "(prompts.keep_duplicates=true keeps them)")
    full = const  # constitution.json keeps its checks: evaluate's behavioural pass scores with them
    if cfg.principles.checks:
        from rich.markup import escape

        for note in checks_mod.preflight(const, recs):  # a `when:` value no prompt has: the check applies to none
            tracker.console.print(f"[bold]checks[/]: {escape(note)}")
    else:  # the run ignores every check: the stages are built without them (no choose, no inspect)
        const = const.without_checks()
    return full, const, recs, dups


def run_ray(cfg: RunConfig, out_dir: Path, recs, const, tracker: Tracker, writer: store.Writer, model_id) -> None:
    """executor=ray: every replica runs generate() (and the judge) on its batches; rows come back with their
    results and are written as one chunk (the replicas hold the batches)."""
    from .executors import ray as ray_exec
    built = build_rows(cfg, recs, const)
    order = {r.id: i for i, r in enumerate(built)}  # replicas return rows in the order they finished
    rows = sorted(ray_exec.generate(cfg, out_dir, built, const, tracker, open_backend, batch),
                  key=lambda r: order[r.id])
    job = Run(cfg, None, const, tracker, None, model_id)
    emit(writer, job, rows, [r for r in rows if r.reason is None and r.end is None])


def run_local(cfg: RunConfig, out_dir: Path, recs, const, backend: Backend | None, tracker: Tracker,
              writer: store.Writer, model_id) -> bool | None:
    """Generate in this process, on `backend` or on an engine of our own opened at the first request the ledger
    does not hold. Returns whether an engine started (None with a caller's engine and no judge of our own)."""
    # Rows go through in chunks of prompts, each chunk's rows written and released before the next: memory stays
    # flat. Passes that need the generator's engine closed first (a reward model, a separate judge model) take
    # the run as one chunk.
    whole = bool(cfg.reward.model or (cfg.judge.enabled and cfg.judge.model is not None))
    per = max(1, (cfg.chunk_size or CHUNK_ROWS) // cfg.samples)
    chunks = [recs] if whole else [recs[i:i + per] for i in range(0, len(recs), per)] or [[]]
    started = None
    own = backend is None
    if own:
        backend = Lazy(cfg.model.name, cfg.backend.kind != "transformers", lambda: open_backend(cfg, tracker))
    ledger = Ledger(out_dir / "work" / "generations.jsonl")
    # engine logs go to engine.log, the terminal shows our progress (a fake engine or a server client is quiet)
    quiet = own and not cfg.verbose and cfg.backend.kind in ("vllm", "transformers")
    job = None
    with enginelog.to_log(out_dir / "engine.log", tracker.console) if quiet else nullcontext():
        try:
            job = Run(cfg, backend, const, tracker, ledger, model_id)
            job.inspector = judge_server(cfg, const, tracker)
            for chunk in chunks:
                rows = build_rows(cfg, chunk, const)
                kept = generate(job, rows)
                if cfg.judge.enabled and kept:
                    kept = _judge(job, cfg, kept, backend, own, tracker)
                if not whole:
                    emit(writer, job, rows, kept)
        except BaseException:
            writer.close()  # the run stops; its parts are rebuilt from the ledger by the rerun
            raise
        finally:
            ledger.close()
            if getattr(backend, "retries", 0):  # an endpoint that failed now and then (429, 5xx, restarts)
                tracker.console.print(f"[bold]backend[/]: {backend.retries} request tries failed and were retried")
            if own:
                started = backend.opened
                backend.close()
            if job is not None and job.inspector is not None:
                job.judge_started |= job.inspector.opened
                job.inspector.close()
            if job is not None and job.judge_started:
                started = True  # a separate judge model's engine (beside a caller's engine, too)
    if whole:  # the reward model loads only now, with the generator's engine closed
        emit(writer, job, rows, kept)
    return started
