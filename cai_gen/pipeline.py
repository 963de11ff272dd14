"""A run, from config to files (its rows and the stage API they share: rows.py).

respond -> (critique -> gate -> revise) x rounds -> pair [-> judge] [-> reward] -> write. The stages are objects
(stages.py), the schedules run a list of them (flow.py). Rows that fail a check leave the flow with a reason
(rejected.jsonl), rows the gate finds nothing wrong with end early (no_violation.jsonl): never silently lost.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

from . import constitution as constitution_mod
from . import prompts as prompts_mod
from . import checks as checks_mod
from . import enginelog, fingerprint, flow, models, quality, report, rundir, runfiles, stages as stages_mod
from .backends import Backend, Lazy, backend_class, make_backend, queued
from .config import RunConfig
from .ledger import Ledger
from .lock import RunLock
from .models import resolve
from .progress import Tracker
from .rows import Row, Run, build_rows


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
        return make_backend(cfg.backend.kind, path, jm.name, cfg.backend.judge_options(cfg.judge, cfg.seed))

    judge_backend = Lazy(jm.name, queued(backend_class(cfg.backend.kind)), load)
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
    if not cfg.backend.client:
        tracker.console.print(f"[bold]checks[/]: judge checks run on the generating model; judge.model "
                              f"({jm.name}) judges them only over backend=openai (a judge server beside the "
                              "generator's), and judges the pairs after generation")
        return None
    path = resolve(jm.source, jm.path, jm.cache_dir)  # the judge's tokenizer counts its context, as in _judge
    return Lazy(jm.name, True, lambda: make_backend(cfg.backend.kind, path, jm.name,
                                                    cfg.backend.judge_options(cfg.judge, cfg.seed)))


def preflight(cfg: RunConfig, own_engine: bool) -> None:
    """Before any generation: every model this run will load exists, and a judge endpoint serves the judge.
    A typo then costs seconds, not a finished generation pass (the judge loads only after it)."""
    if own_engine and cfg.backend.in_process:
        models.check(cfg.model.source, cfg.model.path, "model")
    if cfg.judge.enabled and cfg.judge.model is not None:
        cfg.backend.check_judge(cfg.judge, cfg.seed)


def open_backend(cfg: RunConfig, tracker: Tracker) -> Backend:
    """Load the configured engine (or connect to the endpoint) for the generating model."""
    # the fake engine loads nothing, so it needs no checkpoint (and no conversion); nor does a server's client
    # that counts no tokens
    remote = not cfg.backend.needs_checkpoint()
    path = (cfg.model.path or cfg.model.name) if remote else resolve(cfg.model.source, cfg.model.path, cfg.model.cache_dir)
    t = time.perf_counter()
    tracker.console.print(f"[bold]engine[/]: {cfg.backend.kind} loading {cfg.model.name} ...")
    backend = make_backend(cfg.backend.kind, path, cfg.model.name, cfg.backend.options(cfg.model, cfg.seed))
    dtype = getattr(backend, "dtype", None)  # what model.dtype=auto became on this machine (vllm, transformers)
    tracker.console.print(f"[bold]engine[/]: up in {time.perf_counter() - t:.0f}s"
                          + (f" ({dtype}, context {backend.max_model_len})" if dtype else ""))
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


def emit(writer: runfiles.Writer, job: Run, rows: list[Row], kept: list[Row]) -> None:
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
    writer = runfiles.Writer(out_dir, cfg, full)
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
    runfiles.write_summary(out_dir, summary)
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


def run_ray(cfg: RunConfig, out_dir: Path, recs, const, tracker: Tracker, writer: runfiles.Writer, model_id) -> None:
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
              writer: runfiles.Writer, model_id) -> bool | None:
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
        backend = Lazy(cfg.model.name, queued(backend_class(cfg.backend.kind)), lambda: open_backend(cfg, tracker))
    ledger = Ledger(out_dir / rundir.WORK / rundir.LEDGER)
    # engine logs go to engine.log, the terminal shows our progress (a fake engine or a server client is quiet)
    quiet = own and not cfg.verbose and cfg.backend.in_process
    job = None
    with enginelog.to_log(out_dir / rundir.ENGINE_LOG, tracker.console) if quiet else nullcontext():
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
