"""Refuse to resume a run directory with a different config or constitution unless restart=true.

The ledger is content-addressed (a generation is reused only for the exact same request), so nothing can mix:
the fingerprint guards the run dir's identity (rerunning a sweep into the wrong dir is refused), not the ledger.
restart=true keeps the ledger, so whatever requests did not change (round 1 when rounds goes 1 -> 2, every
answer when only the revision style changes) are reused."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .store import atomic_write

# knobs that do not change what is generated, or only decide what is kept of it: a resume may change them
# freely and only the cheap part reruns (filters, gate and judge actions, review rules: no engine start when the
# ledger holds every request needed). Judge and gate requests have their own ledger keys. include_path only says
# where files are found: the constitution's content is checked through its ref (a hash).
FREE = {"output", "resume", "restart", "include_path", "limit", "chunk_size", "pipelined", "judge", "reward", "review",
        "executor", "filters", "gate"}
FREE_FLAT = {"backend.delay", "backend.enforce_eager", "backend.gpu_memory_utilization", "backend.max_num_seqs",
             "backend.batch_size", "backend.device", "backend.judge", "backend.base_url", "backend.api_key_env",
             "backend.served_model", "backend.concurrency", "backend.max_retries", "backend.timeout",
             "backend.backoff", "backend.backoff_max", "backend.extra_body"}


def _flat(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{pre}{k}.")
        else:
            out[f"{pre}{k}"] = v
    return out


def check(out: Path, cfg, const) -> None:
    now = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in FREE}
    now["constitution_ref"] = const.ref
    # JSON round trip so tuples compare equal to the lists read back from run.json
    now = {k: v for k, v in json.loads(json.dumps(_flat(now))).items() if k not in FREE_FLAT}
    f = out / "work" / "run.json"
    if f.exists():
        try:
            old = json.loads(f.read_text())
        except ValueError:
            raise UserError(f"{f}: damaged run record; use a new run dir or restart=true") from None
        changed = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        if changed and not cfg.restart:
            raise UserError(f"{out}: this run dir was made with a different config (changed: {', '.join(changed[:6])}); "
                            "use a new run dir, or restart=true to rerun it with this config (unchanged requests "
                            "are reused)")
    atomic_write(f, json.dumps(now, indent=1, sort_keys=True) + "\n")
