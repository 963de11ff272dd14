"""Write a finished run: TRL-ready preference data, KTO rows, the trace, rejected pairs, summary.

Every final file is written to a temp name and renamed into place, so a half-written file never exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .review import route

PREF_COLUMNS = ["prompt", "chosen", "rejected", "id", "principle_ids", "critiques", "gate", "edit_ratio", "domain",
                "source", "created_at", "model", "constitution", "sampling", "similarity", "flags", "split"]
SFT_COLUMNS = ["messages", "id", "domain", "origin", "created_at", "split"]
KTO_COLUMNS = ["prompt", "completion", "label", "id", "domain", "created_at", "split"]


def split_of(prompt_id: str, test_size: float) -> str:
    """'train' or 'test' by a hash of the prompt id: every sample of a prompt lands on one side (prompt-disjoint),
    and a prompt keeps its side when the set grows, is sharded or is merged."""
    h = int.from_bytes(hashlib.sha256(f"split:{prompt_id}".encode()).digest()[:8], "big") / 2 ** 64
    return "test" if h < test_size else "train"


def row_split(row: dict, test_size: float) -> str:
    """A written row's split: its own column, else from its prompt id (row ids are PROMPT_ID-sN)."""
    return row.get("split") or split_of(re.sub(r"-s\d+$", "", str(row["id"])), test_size)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def save_dataset(path: Path, rows: list[dict] | dict[str, tuple[list[dict], list[str]]],
                 columns: list[str] | None = None) -> None:
    """datasets.save_to_disk into a temp dir, then swap it in (TRL users call load_from_disk on it). A dict of
    split name -> (rows, columns) is saved as a DatasetDict; columns name an empty split's columns."""
    import datasets

    datasets.disable_progress_bars()

    def one(rs: list[dict], cols: list[str], like=()):
        if rs:
            return datasets.Dataset.from_list(rs)
        # an empty split takes a non-empty sibling's features (train_prefs for test_prefs), so the two concatenate
        same = [d for d in like if sorted(d.column_names) == sorted(cols)]
        return same[0].select([]) if same else datasets.Dataset.from_dict({c: [] for c in cols})

    if isinstance(rows, dict):
        full = [one(rs, cols) for rs, cols in rows.values() if rs]
        ds = datasets.DatasetDict({k: one(rs, cols, full) for k, (rs, cols) in rows.items()})
        # datasets saves an empty split as zero shards, which load_from_disk then cannot read: one shard each
        shards = {k: 1 if len(d) == 0 else None for k, d in ds.items()}
    else:
        ds = one(rows, columns)
        shards = 1 if len(ds) == 0 else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        ds.save_to_disk(str(tmp), num_shards=shards)
        tmp.chmod(0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the old copy is untouched
        raise
    swap_dir(tmp, path)


def swap_dir(new: Path, path: Path) -> None:
    """Put the directory `new` at `path` so that a reader of `path` sees the old copy or the new one, never
    neither: one renameat2(RENAME_EXCHANGE) on Linux, then the old copy (now at `new`) is removed. Elsewhere
    (or on filesystems without it) the old copy is moved aside first: a moment without `path`, never a mix."""
    if not path.exists():
        os.replace(new, path)
        return
    if not _exchange(new, path):
        aside = new.with_name(new.name + ".old")
        os.replace(path, aside)
        os.replace(new, path)
        new = aside
    shutil.rmtree(new, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    except (OSError, AttributeError):  # no renameat2 in this libc
        return False


def save_splits(out: Path, prefs: list[dict], sft: list[dict], kto: list[dict], pref_columns: list[str]) -> None:
    """preferences/ = DatasetDict train_prefs / test_prefs / train_sft / test_sft (the published CAI datasets'
    layout: prompt-disjoint, so a model can be SFT'd and DPO'd and still be tested on unseen prompts); kto/ =
    train / test."""
    def side(rows: list[dict], s: str) -> list[dict]:
        return [r for r in rows if r["split"] == s]

    save_dataset(out / "preferences", {f"{s}_{kind}": (side(rows, s), cols) for kind, rows, cols in
                                       (("prefs", prefs, pref_columns), ("sft", sft, SFT_COLUMNS))
                                       for s in ("train", "test")})
    save_dataset(out / "kto", {s: (side(kto, s), KTO_COLUMNS) for s in ("train", "test")})


def prompt_messages(row) -> list[dict]:
    """The prompt column: system (if any), the earlier turns of a multi-turn prompt, the last user turn."""
    return row.prompt.messages()


def pair_messages(row) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) as chat messages. Normally chosen = final revision, rejected = original;
    a judge swap (on_disagrees=swap) reverses them."""
    chosen, rejected = row.revisions[-1], row.original
    if row.swapped:
        chosen, rejected = rejected, chosen
    return prompt_messages(row), [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]


def preference(row, cfg, const, created: str) -> dict:
    s = cfg.sampling
    prompt, chosen, rejected = pair_messages(row)
    extra = {}
    if row.judge is not None:  # columns exist only when their stage ran, so TRL sees no all-null columns
        extra["judge"] = row.judge
    if row.reward is not None:
        extra["reward"] = row.reward
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "id": row.id,
        "principle_ids": row.principles[: len(row.critiques)],
        "critiques": row.critiques,
        "gate": row.gate,
        "edit_ratio": round(1.0 - row.similarity, 4) if row.similarity is not None else None,
        "domain": row.prompt.domain,
        "source": row.prompt.source,
        "created_at": row.done_at or created,  # its last generation's time; a ledger too old to say: this run's
        "model": cfg.model.name,
        "constitution": const.ref,
        "sampling": {"temperature": row.params.temperature, "top_p": row.params.top_p, "seed": row.params.seed,
                     "critique_temperature": s.critique_temperature, "critique_top_p": s.critique_top_p},
        "similarity": round(row.similarity, 4) if row.similarity is not None else None,
        "flags": row.flags,
        "split": split_of(row.prompt.id, cfg.output.test_size),
        **extra,
    }


def kto_rows(pref: dict) -> list[dict]:
    # KTO is unpaired: the revision is a desirable completion, the original an undesirable one.
    base = {"prompt": pref["prompt"], "id": pref["id"], "domain": pref["domain"], "created_at": pref["created_at"],
            "split": pref["split"]}
    return [{**base, "completion": pref["chosen"], "label": True},
            {**base, "completion": pref["rejected"], "label": False}]


def kto_desirable(u: dict) -> dict:
    """A no-violation original as a KTO desirable row."""
    return {"prompt": u["prompt"], "id": u["id"], "domain": u["domain"], "created_at": u["created_at"],
            "split": u["split"], "completion": [{"role": "assistant", "content": u["original"]}], "label": True}


def run_config(run_dir: Path) -> dict:
    """A run dir's validated config as written (config.json); {} for a dir without one."""
    f = Path(run_dir) / "config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def run_test_size(run_dir: Path) -> float:
    """The test share a run dir was split with (0.1, the default, for runs written before splits existed)."""
    return (run_config(run_dir).get("output") or {}).get("test_size", 0.1)


def with_splits(rows: list[dict], test_size: float) -> list[dict]:
    """Rows read back from files (merges) with their split filled in where an older run had none."""
    return [r if r.get("split") else {**r, "split": row_split(r, test_size)} for r in rows]


def rejected_row(row) -> dict:
    return {"id": row.id, "stage": row.stage, "reason": row.reason, "prompt": prompt_messages(row),
            "original": row.original or None, "principle_ids": row.principles[: max(len(row.critiques), 1)],
            "critiques": row.critiques, "gate": row.gate, "revision": row.draft,
            "similarity": row.similarity, "flags": row.flags, "domain": row.prompt.domain,
            **({"judge": row.judge} if row.judge else {}), **({"reward": row.reward} if row.reward else {})}


def no_violation_row(row, created: str, test_size: float) -> dict:
    """A row the gate found nothing to fix in: its original stands (KTO desirable, SFT row), no pair."""
    return {"id": row.id, "prompt": prompt_messages(row), "original": row.original,
            "principle_ids": row.principles[: len(row.critiques)], "critiques": row.critiques, "gate": row.gate,
            "flags": row.flags, "domain": row.prompt.domain, "created_at": row.done_at or created,
            "split": split_of(row.prompt.id, test_size)}


def sft_rows(prefs: list[dict], unpaired: list[dict]) -> list[dict]:
    """SFT rows (SL-CAI trains on the revisions): prompt turns + final revision, and the gate's no-violation
    originals as they are."""
    out = [{"messages": p["prompt"] + p["chosen"], "id": p["id"], "domain": p["domain"], "origin": "revision",
            "created_at": p["created_at"], "split": p["split"]} for p in prefs]
    out += [{"messages": u["prompt"] + [{"role": "assistant", "content": u["original"]}], "id": u["id"],
             "domain": u["domain"], "origin": "no_violation", "created_at": u["created_at"], "split": u["split"]}
            for u in unpaired]
    return out


def write(out: Path, cfg, const, rows: list, kept: list, rejected: list, ended: list, created: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    prefs = [preference(r, cfg, const, created) for r in kept]
    unpaired = [no_violation_row(r, created, cfg.output.test_size) for r in ended]
    kto = [k for p in prefs for k in kto_rows(p)] + [kto_desirable(u) for u in unpaired]
    sft = sft_rows(prefs, unpaired)
    atomic_write(out / "config.json", json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
    atomic_write(out / "constitution.json", json.dumps({"ref": const.ref, **const.model_dump(mode="json")},
                                                       indent=2, ensure_ascii=False) + "\n")
    write_jsonl(out / "preferences.jsonl", prefs)
    write_jsonl(out / "kto.jsonl", kto)
    write_jsonl(out / "rejected.jsonl", [rejected_row(r) for r in rejected])
    write_jsonl(out / "no_violation.jsonl", unpaired)
    write_jsonl(out / "sft.jsonl", sft)
    # pairs routed to expert review (python -m cai_gen.review serve); rewritten on every run from `review:`
    write_jsonl(out / "review_queue.jsonl", route.queue(prefs, cfg.review, cfg.seed, const))
    if cfg.output.trace:
        write_jsonl(out / "trace.jsonl", [{"id": r.id, "prompt_id": r.prompt.id, "sample": r.sample,
                                          "principle_ids": r.principles, "stages": r.trace,
                                          "outcome": r.reason or r.end or "kept"} for r in rows])
    if cfg.output.save_dataset:
        save_splits(out, prefs, sft, kto, PREF_COLUMNS)
    return {
        "rows": len(rows),
        "kept": len(prefs),
        "rejected": len(rejected),
        "no_violation": len(unpaired),
        "model": cfg.model.name,
        "constitution": const.ref,
        "created_at": created,
    }


def write_summary(out: Path, summary: dict) -> None:
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
