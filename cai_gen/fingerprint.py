"""Refuse to resume a run directory with a different config or constitution (its ledger would mix runs)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import UserError
from .store import atomic_write

# knobs that do not change what is generated: a resume may change them freely
# (judge and reward run after generation and are redone on every run; judge requests have their own ledger keys)
FREE = {"output", "resume", "restart", "limit", "chunk_size", "pipelined", "judge", "reward", "review", "executor"}
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
                            "use a new run dir, or restart=true to discard its finished work")
        if changed:
            shutil.rmtree(out / "work")
    atomic_write(f, json.dumps(now, indent=1, sort_keys=True) + "\n")
