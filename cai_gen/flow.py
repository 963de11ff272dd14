"""Pipelined schedule: every row moves to its next stage the moment its request finishes.

The staged schedule (one engine batch per stage) leaves the engine half empty at the end of every stage while
the last long answers finish: critique cannot start until every answer is in. Here all rows share one engine
queue instead: a finished answer's critique request is queued at once, so the engine's batch stays full and the
tail of one stage overlaps the start of the next. Requests, seeds, ledger keys and per-row checks are exactly the
staged schedule's (Run.request / Run.accept), so the two schedules make the same requests and resume each other.
"""
from __future__ import annotations

from collections import deque

from .ledger import request_key
from .progress import label


def pipelined(job, rows: list) -> list:
    """Take rows through respond -> (critique -> revise) x rounds -> pair; returns the kept rows."""
    cfg, backend, ledger = job.cfg, job.backend, job.ledger
    steps = [("respond", 0)] + [(n, r) for r in range(1, cfg.rounds + 1) for n in ("critique", "revise")]
    labels = [label(n, r) for n, r in steps]
    kept: list = []
    pending: dict[int, tuple] = {}    # engine handle -> (row, step, ledger key, conversation, params)
    ready = deque((row, 0) for row in rows)
    reused = [0] * len(steps)

    with job.tracker.flow(labels, len(rows)) as (on_done, dropped):
        def finish(row, k: int, conv, p, g) -> None:
            name, rnd = steps[k]
            job.record(row, name, rnd, conv, p, g)
            if job.accept(row, name, rnd, g):
                ready.append((row, k + 1))
            else:
                dropped(k)

        while ready or pending:
            batch = []  # everything that became ready goes to the engine in one submit
            while ready:
                row, k = ready.popleft()
                if k == len(steps):
                    if job.pair_one(row):
                        kept.append(row)
                    continue
                name, rnd = steps[k]
                conv, p, max_tokens = job.request(row, name, rnd)
                n = backend.count_tokens([conv])[0]
                if n + max_tokens > backend.max_model_len:
                    job.overflow(row, name, rnd, n)
                    dropped(k)
                    continue
                key = request_key(backend.model, conv, p)
                g = ledger.get(key)
                if g is not None:  # finished in an earlier (killed) run
                    reused[k] += 1
                    on_done(k, g, reused=True)
                    finish(row, k, conv, p, g)
                    continue
                batch.append((row, k, key, conv, p))
            if batch:
                for h, item in zip(backend.submit([b[3] for b in batch], [b[4] for b in batch]), batch):
                    pending[h] = item
            if pending:
                for h, g in backend.poll():
                    row, k, key, conv, p = pending.pop(h)
                    ledger.add(key, g)
                    on_done(k, g)
                    finish(row, k, conv, p, g)
    ledger.sync()
    for name, n in zip(labels, reused):
        if n:
            job.tracker.console.print(f"{name}: {n} rows reused from an earlier run")
    return kept
