"""Refuse to resume a run directory with a different config or constitution unless restart=true.

The ledger is content-addressed (a generation is reused only for the exact same request), so nothing can mix:
the fingerprint guards the run dir's identity (rerunning a sweep into the wrong dir is refused), not the ledger.
restart=true keeps the ledger, so whatever requests did not change (round 1 when rounds goes 1 -> 2, every
answer when only the revision style changes) are reused."""
from __future__ import annotations

import json
from pathlib import Path

from . import rundir
from .errors import UserError
from .store import atomic_write

# knobs that do not change what is generated, or only decide what is kept of it: a resume may change them
# freely and only the cheap part reruns (filters, gate and judge actions, review rules: no engine start when the
# ledger holds every request needed). Judge and gate requests have their own ledger keys. include_path only says
# where files are found: the constitution's content is checked through its ref (a hash).
FREE = {"output", "resume", "restart", "verbose", "preview", "include_path", "limit", "chunk_size", "pipelined", "in_flight", "judge",
        "reward", "review", "executor", "filters", "gate"}
# How the model is run is not what it generates: the ledger keys hold the model's identity (models.identity), the
# conversation and the sampling params, never which real engine ran it. So a run moves freely between the local vLLM engine, a server of the same
# model (backend=openai) and the transformers backend; only a scripted engine (the fake: tests, dry runs) is its
# own kind, and its scripted knobs (its config class's `scripted`: mode, gate, judge) are part of what it
# "generates" (in its ledger keys too). A kind no backend registers (an old record's) stays itself.
# model knobs that change nothing generated: where the converted checkpoint is cached, GPUs per engine
# nor how many best-of-N samples are asked at a time (the same requests, the same revision: fewer of them generated)
NO_OUTPUT = {"model.cache_dir", "model.tensor_parallel_size", "sampling.revise_wave"}
# cai_gen.synth's work dir: what only decides how many candidates run or which are kept may change (a larger n
# continues the same requests); the model, engine kind, constitution, seed and sampling may not
SYNTH_FREE = {"out", "restart", "verbose", "include_path", "n", "oversample", "rounds", "budget", "filters", "dedup"}


def _identity(flat: dict) -> dict:
    """The keys that make a run dir what it is, from a flat config (today's, or one read back from run.json)."""
    from .backends import configs

    kind = flat.get("backend.kind")
    cls = configs().get(kind)
    kept = {"backend.kind"} | {f"backend.{k}" for k in (cls.scripted if cls else ())}
    out = {k: v for k, v in flat.items() if (not k.startswith("backend.") or k in kept) and k not in NO_OUTPUT}
    if "backend.kind" in out and cls is not None and not cls.scripted:
        out["backend.kind"] = "model"
    return out


def _flat(d: dict, pre: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{pre}{k}.")
        else:
            out[f"{pre}{k}"] = v
    return out


def check(out: Path, cfg, const, model_id: str, free: set = FREE, elsewhere: str = "use a new run dir") -> None:
    """model_id: models.identity of the generating model (its path's files, not its display name), so a
    changed checkpoint at the same path is a different config too."""
    now = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in free}
    # checks only decide what is kept (and which stored requests are made): a re-filter, not another run
    now["constitution_ref"] = f"{const.name}@{const.version}#{const.generation_hash}"
    # JSON round trip so tuples compare equal to the lists read back from run.json
    now = _identity(json.loads(json.dumps(_flat(now))))
    now["model.identity"] = model_id
    f = out / rundir.WORK / rundir.RUN_RECORD
    if f.exists():
        try:
            old = _identity(json.loads(f.read_text()))  # a record written by an older version compares too
        except ValueError:
            raise UserError(f"{f}: damaged run record; {elsewhere} or restart=true") from None
        if "model.identity" not in old:  # written before identities: its model is known by its config only
            if old.get("backend.kind") == "fake" and now.get("backend.kind") != "fake":
                # its ledger keys (the model's name) are the keys a real engine's requests have now
                raise UserError(f"{out}: made by the fake engine with an older cai_gen, whose generations would "
                                f"answer a real engine's requests; {elsewhere}")
            old["model.identity"] = model_id
        changed = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        if changed and not cfg.restart:
            raise UserError(f"{out}: this run dir was made with a different config (changed: {', '.join(changed[:6])}); "
                            f"{elsewhere}, or restart=true to rerun it with this config (unchanged requests "
                            "are reused)")
    atomic_write(f, json.dumps(now, indent=1, sort_keys=True) + "\n")
