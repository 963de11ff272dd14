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
FREE = {"output", "resume", "restart", "verbose", "include_path", "limit", "chunk_size", "pipelined", "judge",
        "reward", "review", "executor", "filters", "gate"}
# How the model is run is not what it generates: the ledger keys hold the model name, the conversation and the
# sampling params, never the engine. So a run moves freely between the local vLLM engine, a server of the same
# model (backend=openai) and the transformers backend; only the fake engine (tests, dry runs) is its own kind,
# and its scripted behaviour (mode, gate, judge) is part of what it "generates".
ENGINES = {"vllm": "model", "openai": "model", "transformers": "model", "fake": "fake"}
KEPT_FLAT = {"backend.kind", "backend.mode", "backend.gate", "backend.judge"}


def _identity(flat: dict) -> dict:
    """The keys that make a run dir what it is, from a flat config (today's, or one read back from run.json)."""
    out = {k: v for k, v in flat.items() if not k.startswith("backend.") or k in KEPT_FLAT}
    if "backend.kind" in out:
        out["backend.kind"] = ENGINES.get(out["backend.kind"], out["backend.kind"])
    if out.get("backend.kind") != "fake":
        for k in ("backend.mode", "backend.gate", "backend.judge"):
            out.pop(k, None)
    return out


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
    # checks only decide what is kept (and which stored requests are made): a re-filter, not another run
    now["constitution_ref"] = f"{const.name}@{const.version}#{const.generation_hash}"
    # JSON round trip so tuples compare equal to the lists read back from run.json
    now = _identity(json.loads(json.dumps(_flat(now))))
    f = out / "work" / "run.json"
    if f.exists():
        try:
            old = _identity(json.loads(f.read_text()))  # a record written by an older version compares too
        except ValueError:
            raise UserError(f"{f}: damaged run record; use a new run dir or restart=true") from None
        changed = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        if changed and not cfg.restart:
            raise UserError(f"{out}: this run dir was made with a different config (changed: {', '.join(changed[:6])}); "
                            "use a new run dir, or restart=true to rerun it with this config (unchanged requests "
                            "are reused)")
    atomic_write(f, json.dumps(now, indent=1, sort_keys=True) + "\n")
