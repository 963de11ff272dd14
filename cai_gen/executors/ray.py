"""executor=ray: the generation stages on Ray Data, one engine replica per GPU of a Ray cluster.

The rows go into a Ray Dataset; `map_batches` hands each batch to a replica, an actor that loaded its engine
once and takes the batch through every stage with the same code as a local run (pipeline.generate: the
pipelined respond -> critique -> gate -> revise -> pair, then the judge when judge=self). So the requests, seeds and
ledger keys are exactly the local run's, and so are the output files. Each replica writes its own ledger
segment (work/generations-<id>.jsonl) into the run dir, which must be on a filesystem every node sees (NFS,
Lustre): a killed job resumes on either executor. The driver shows progress and writes the outputs.
The only module that imports ray.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import time
import uuid
from pathlib import Path

from rich.console import Console

from .. import paths, rundir
from ..errors import Resumable, UserError


class Replica:
    """One engine, many batches. Ray constructs it once per actor (map_batches with a callable class).
    `open_backend(cfg, tracker)` and `work(cfg, backend, const, tracker, ledger, rows)` are the caller's
    (pipeline.open_backend, pipeline.batch): handed in, not imported, so the pipeline calls this executor and
    the executor never imports the pipeline back (they travel pickled by name and resolve on the worker)."""

    def __init__(self, cfg_blob: bytes, out_dir: str, const_blob: bytes, hooks_blob: bytes, include: tuple = ()):
        from .. import backends
        from ..ledger import Ledger
        from ..progress import Tracker

        # a backend of the user's own (an include dir's backend/NAME.py) is registered here as in the driver, so
        # the config, which names its config class, unpickles and the replica opens that engine
        backends.load(include)
        self.cfg, self.const = pickle.loads(cfg_blob), pickle.loads(const_blob)
        open_backend, self.work = pickle.loads(hooks_blob)
        self.tracker = Tracker(console=Console(file=io.StringIO()))  # the driver shows progress
        t = time.perf_counter()
        self.backend = open_backend(self.cfg, self.tracker)
        self.start_s = time.perf_counter() - t  # reported with the first batch: not generation time
        # this replica's own segment; opening it reads every earlier segment once (what a rerun resumes from)
        self.ledger = Ledger(Path(out_dir) / rundir.WORK / rundir.segment(uuid.uuid4().hex[:12]))

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        rows = [pickle.loads(b) for b in batch["row"]]
        before = {k: vars(v).copy() for k, v in self.tracker.stages.items()}
        try:
            self.work(self.cfg, self.backend, self.const, self.tracker, self.ledger, rows)
        except UserError as e:  # the endpoint gave up, a bad input: the driver says it in one line
            # (returned, not raised: Ray's wrappers would bury the message in a stack of its own; pickled, so the
            # driver knows a Resumable one, such as an endpoint that gave up, and says how to resume)
            return {"row": np.array([b""], dtype=object), "stats": np.array([b""], dtype=object),
                    "error": np.array([pickle.dumps(e)], dtype=object)}
        finally:
            self.ledger.sync()  # the batch's generations are on disk before its rows leave the replica
        stats = {k: {f: v - before.get(k, {}).get(f, 0) for f, v in vars(st).items()}
                 for k, st in self.tracker.stages.items()}
        if self.start_s is not None:
            stats["_engine_start_s"], self.start_s = self.start_s, None
        return {"row": np.array([pickle.dumps(r) for r in rows], dtype=object),
                "stats": np.array([pickle.dumps(stats)] + [b""] * (len(rows) - 1), dtype=object),
                "error": np.array([b""] * len(rows), dtype=object)}


def _root(e: BaseException) -> BaseException:
    """The innermost exception Ray kept inside its wrappers (RayTaskError -> UserCodeException -> ...)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = getattr(e, "cause", None) or e.__cause__ or e.__context__
        if nxt is None:
            return e
        e = nxt
    return e


def _replicas(cfg, ray) -> tuple[int, float]:
    """(replicas, GPUs per replica): one replica per tensor-parallel group of the cluster's GPUs."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    per = cfg.model.tensor_parallel_size if gpus and cfg.backend.gpus else 0
    n = cfg.executor.replicas or (max(1, gpus // per) if per else 1)
    if per and n * per > gpus:
        raise UserError(f"executor.replicas: {n} replicas x {per} GPUs need {n * per} GPUs; the cluster has {gpus}")
    return n, per


def generate(cfg, out_dir: Path, rows: list, const, tracker, open_backend, work) -> list:
    """Every row through the stages on the cluster; returns the rows with their results, in any order.
    `open_backend` and `work` run on each replica (see Replica): module-level functions, so they pickle."""
    from ..backends import Generation
    from ..progress import StageStats

    try:
        import ray
    except ImportError:
        raise UserError("executor=ray needs Ray: pip install -e '.[ray]'") from None
    if not rows:
        return rows
    address = cfg.executor.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a data job
    t0 = time.perf_counter()
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=True)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset INFO lines would bury our progress
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is below (rows, tok/s, ETA)
    ctx.verbose_progress = False
    n, gpus = _replicas(cfg, ray)
    tracker.console.print(f"[bold]executor[/]: ray ({'local' if not address else address}) with {n} "
                          f"{cfg.backend.kind} replica(s){f' x {gpus} GPU' if gpus else ''}, up in "
                          f"{time.perf_counter() - t0:.0f}s")
    size = min(cfg.executor.batch_size, max(1, -(-len(rows) // n)))  # enough batches to keep every replica busy
    ds = ray.data.from_items([{"row": pickle.dumps(r)} for r in rows], override_num_blocks=-(-len(rows) // size))
    kwargs = {"cfg_blob": pickle.dumps(cfg), "const_blob": pickle.dumps(const), "out_dir": str(Path(out_dir).resolve()),
              "hooks_blob": pickle.dumps((open_backend, work)),
              # the driver's include dirs, resolved (a replica may not see $CAI_GEN_INCLUDE_PATH): on a cluster they
              # must be on a filesystem every node sees, like the run dir
              "include": tuple(str(d) for d in paths.include_dirs(cfg.include_path))}
    out = ds.map_batches(Replica, fn_constructor_kwargs=kwargs, batch_size=size, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=n), num_gpus=gpus,
                         num_cpus=cfg.executor.cpus_per_replica)
    done: list = []
    starts: list[float] = []  # each replica's engine start (inside the pass, but not generation)
    t1 = time.perf_counter()
    with tracker.stage("ray", len(rows), rate=False) as on_done:  # the run's one tok/s is the summary's
        try:
            for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
                err = next((pickle.loads(m) for m in batch["error"] if m), None)
                if err:
                    raise (Resumable if isinstance(err, Resumable) else UserError)(f"executor=ray: {err}")
                for b in batch["stats"]:
                    if b:
                        st_all = pickle.loads(b)
                        if "_engine_start_s" in st_all:
                            starts.append(st_all.pop("_engine_start_s"))
                        for name, st in st_all.items():
                            agg = tracker.stages.setdefault(name, StageStats())
                            for f, v in st.items():
                                setattr(agg, f, getattr(agg, f) + v)
                for b in batch["row"]:
                    r = pickle.loads(b)
                    done.append(r)
                    toks = sum(s.get("completion_tokens", 0) for s in r.trace if "output" in s)
                    on_done(len(done) - 1, Generation("", "stop", 0, toks))
        except Exception as e:  # noqa: BLE001  (a replica died: say so in one line; its finished work is saved)
            if isinstance(e, UserError):  # a replica's own error, returned as data (see Replica.__call__)
                raise
            root = _root(e)
            last = str(root).strip().splitlines()[-1] if str(root).strip() else ""
            # finished requests are in the run dir's ledger: the entry point says how many, and how to resume
            raise Resumable(f"executor=ray: a replica failed ({type(root).__name__}: {last[:300]})") from None
    tracker.stages.pop("ray", None)  # the per-stage stats above are the real ones; keep the wall time
    # generation time = the pass minus the slowest replica's engine start (replicas start side by side)
    tracker.gen_seconds = max(0.0, tracker.gen_seconds - max(starts, default=0.0))
    tracker.console.print(f"[bold]executor[/]: {len(done)} rows in {time.perf_counter() - t1:.0f}s "
                          f"(replica engine start {max(starts, default=0.0):.0f}s)")
    return done
