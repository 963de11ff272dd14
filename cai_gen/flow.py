"""The schedules: how a list of stages (stages.py) runs over rows on one backend (the judge checks may go to a
judge server beside it: Run.engine_for).

pipelined: every row moves to its next stage the moment its request finishes. The staged schedule (one engine
batch per stage) leaves the engine half empty at the end of every stage while the last long answers finish:
critique cannot start until every answer is in. Here the rows share one engine queue instead: a finished
answer's critique request is queued at once, so the engine's batch stays full and the tail of one stage
overlaps the start of the next. At most cfg.in_flight rows are in it at once, started in order, the next as one
leaves: the engine's speed goes to fewer rows, so pairs are made from the start instead of all near the end.
staged: every live row's requests for a stage in one engine batch, a barrier between stages (backends without
submit/poll, and pipelined=false).
Both build requests and accept generations through the same stage objects, so they make the same requests
(same ledger keys) and resume each other. Requests the ledger already holds never reach the engine.
"""
from __future__ import annotations

from collections import deque

from .stages import AGAIN


CPU_IN_FLIGHT = 32  # in_flight=auto on a CPU engine: the batch a 2-core box still runs at full speed


def window(cfg, n: int) -> int:
    """Rows in flight at once for n rows (cfg.in_flight). auto: CPU_IN_FLIGHT for a local engine without a GPU, where
    every row at once splits a few cores over all of them and the first pair waits for nearly the whole run;
    every row on a GPU (it wants the biggest batch) and for a server or the fake engine."""
    w = cfg.in_flight
    if w == "auto":
        w = CPU_IN_FLIGHT if cfg.backend.kind in ("vllm", "transformers") and not _cuda() else None
    return min(w or n, n) or 1


def _cuda() -> bool:
    import torch  # the local engines import it anyway

    return torch.cuda.is_available()


def _engine_steps(stages: list) -> list[int]:
    return [k for k, st in enumerate(stages) if st.engine]


def pipelined(job, rows: list, stages: list, backend) -> list:
    """Take rows through the stages; returns the rows that came through all of them."""
    ledger = job.ledger
    kept: list = []
    pending: dict[tuple, tuple] = {}  # (engine, handle) -> (row, step, request index)
    engines: dict[int, object] = {}  # id -> the engines requests went to
    waiting: dict[int, list] = {}    # id(row) -> [requests, keys, generations, still missing]
    # rows start in order, at most cfg.in_flight at once: the next starts as one leaves. With every row at once the
    # engine's batch splits its speed over all of them and the first pair comes only near the end of the run
    start = deque(rows)
    room = [window(job.cfg, len(rows))]
    ready: deque = deque()
    reused = [0] * len(stages)
    bars = [(st.label, len(rows)) if st.engine else None for st in stages]  # rows, whatever their requests

    with job.tracker.flow(bars) as (on_done, row_done, left):
        def leave(k: int) -> None:  # a row left after step k: later stages will see one row fewer
            room[0] += 1
            for j in range(k + 1, len(stages)):
                left(j)

        def finish(row, k: int, reqs: list, gens: list) -> None:
            st = stages[k]
            for r, g in zip(reqs, gens):
                job.record(row, st, r, g)
            ok = st.accept(job, row, gens)
            if ok is AGAIN:  # the stage asks again (the next best-of-N wave): the row is not through it yet
                ready.append((row, k))
                return
            if reqs:
                row_done(k)
            if ok:
                ready.append((row, k + 1))
            else:
                leave(k)

        while ready or pending or start:
            while start and room[0] > 0:
                ready.append((start.popleft(), 0))
                room[0] -= 1
            batch = []  # everything that became ready goes to the engine in one submit
            while ready:
                row, k = ready.popleft()
                if k == len(stages):
                    kept.append(row)
                    room[0] += 1
                    continue
                st = stages[k]
                reqs = st.requests(job, row)
                if reqs is None:  # the row skips this stage (its rounds are over)
                    left(k)
                    ready.append((row, k + 1))
                    continue
                if not reqs:  # decided without the engine (a gate its checks decide): not the bar's work
                    left(k)
                    finish(row, k, [], [])
                    continue
                found = job.lookup(row, st, reqs, job.engine_for(st, backend))
                if found is None:  # did not fit the context
                    if row.reason is None:
                        left(k)
                        ready.append((row, k + 1))
                    else:
                        leave(k - 1)
                    continue
                keys, gens = found
                miss = [j for j, g in enumerate(gens) if g is None]
                for j, g in enumerate(gens):
                    if g is not None:  # finished in an earlier run
                        reused[k] += 1
                        on_done(k, g, reused=True)
                if not miss:
                    finish(row, k, reqs, gens)
                    continue
                waiting[id(row)] = [reqs, keys, gens, len(miss)]
                batch += [(row, k, j) for j in miss]
            # each stage's engine: the generator's, or a judge server for the judge checks (job.engine_for);
            # handles are per engine, so pending keys on (engine, handle) and only an engine with requests out
            # is polled (a lazy one would open on its first poll)
            by_engine: dict[int, list] = {}
            for item in batch:
                eng = job.engine_for(stages[item[1]], backend)
                engines[id(eng)] = eng
                by_engine.setdefault(id(eng), []).append(item)
            for e, mine in by_engine.items():
                reqs_of = [waiting[id(row)][0][j] for row, _, j in mine]
                hs = engines[e].submit([r.conv for r in reqs_of], [r.params for r in reqs_of])
                for h, item in zip(hs, mine):
                    pending[e, h] = item
            if pending:
                done = []  # rows whose last request came back in this poll: accepted together below
                polled = [(e, h, g) for e in {i for i, _ in pending} for h, g in engines[e].poll()]
                for e, h, g in polled:
                    row, k, j = pending.pop((e, h))
                    w = waiting[id(row)]
                    g = ledger.add(w[1][j], g)
                    on_done(k, g)
                    w[2][j] = g
                    w[3] -= 1
                    if w[3] == 0:
                        del waiting[id(row)]
                        done.append((row, k, w[0], w[2]))
                for k in {k for _, k, _, _ in done}:
                    job.prime(stages[k], [(row, gens) for row, kk, _, gens in done if kk == k])
                for row, k, reqs, gens in done:
                    finish(row, k, reqs, gens)
    ledger.sync()
    for st, n in zip(stages, reused):
        if n:
            job.tracker.console.print(f"{st.label}: {n} requests reused from an earlier run")
    return kept


def staged(job, rows: list, stages: list, backend) -> list:
    """One engine batch per stage (only the requests the ledger lacks), a barrier between stages; a stage that asks
    again for some rows (Revise's next best-of-N wave) gets another batch of those."""
    live = rows
    for st in stages:
        through, again = set(), live
        while again:
            ok, again = _stage(job, st, again, backend)
            through |= ok
        live = [row for row in live if id(row) in through]
    return live


def _stage(job, st, rows: list, backend) -> tuple[set, list]:
    """One batch: the ids of the rows through the stage, and the rows it asks again for."""
    todo = []    # (row, requests, keys, generations)
    passed: set[int] = set()  # id(row): skipped the stage, or kept its last revision on a later-round overflow
    for row in rows:
        reqs = st.requests(job, row)
        if reqs is None:
            passed.add(id(row))
            continue
        if not reqs:
            todo.append((row, [], [], []))
            continue
        found = job.lookup(row, st, reqs, job.engine_for(st, backend))
        if found is None:
            if row.reason is None:
                passed.add(id(row))
            continue
        todo.append((row, reqs, *found))
    flat = [(i, j) for i, (_, _, _, gens) in enumerate(todo) for j, g in enumerate(gens) if g is None]
    n_reused = sum(len(t[3]) for t in todo) - len(flat)
    if n_reused:
        job.tracker.console.print(f"{st.label}: {n_reused} requests reused from an earlier run")
    if st.engine:
        rest: dict[int, int] = {}  # row -> its requests still out: the bar counts rows, not best-of-N samples
        for i, _ in flat:
            rest[i] = rest.get(i, 0) + 1
        with job.tracker.stage(st.label, len(rest), rate=False) as on_done:
            def commit(n: int, g) -> None:
                i, j = flat[n]
                todo[i][3][j] = job.ledger.add(todo[i][2][j], g)  # the stamped generation
                rest[i] -= 1
                on_done(n, g, rest[i] == 0)
            if flat:
                new = job.engine_for(st, backend).generate([todo[i][1][j].conv for i, j in flat],
                                       [todo[i][1][j].params for i, j in flat], commit)
                for (i, j), g in zip(flat, new):
                    if todo[i][3][j] is None:  # a backend that returned it without the callback
                        todo[i][3][j] = job.ledger.add(todo[i][2][j], g)
        job.ledger.sync()
    job.prime(st, [(row, gens) for row, _, _, gens in todo])
    accepted, again = set(), []
    for row, reqs, _, gens in todo:
        for r, g in zip(reqs, gens):
            job.record(row, st, r, g)
        ok = st.accept(job, row, gens)
        if ok is AGAIN:
            again.append(row)
        elif ok:
            accepted.add(id(row))
    return passed | accepted, again
