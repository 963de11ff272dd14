"""What a run's files hold and how they are written: TRL-ready preference, SFT and KTO rows, prompt-disjoint
splits, atomic writes, the datasets (parquet, save_to_disk copies), a run dir read back. runfiles.py streams a
run's rows into its files with these.

Every final file is written to a temp name and renamed into place, so a half-written file never exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .checks import desirable
from .errors import UserError
from . import rundir
from .ids import groups

PREF_COLUMNS = ["prompt", "chosen", "rejected", "id", "prompt_id", "principle_ids", "critiques", "gate", "edit_ratio",
                "domain", "source", "created_at", "model", "constitution", "sampling", "similarity", "flags", "checks",
                "verified", "split"]
SFT_COLUMNS = ["messages", "id", "domain", "origin", "created_at", "split"]
KTO_COLUMNS = ["prompt", "completion", "label", "id", "domain", "created_at", "split"]


def split_of(key: str, test_size: float) -> str:
    """'train' or 'test' by a hash of a split group's key (ids.groups): every sample of a prompt lands on one side
    (prompt-disjoint), and so do copies of one question under other ids and prefixes of one conversation. A
    prompt keeps its side when the set grows (unless a new prompt joins its group), is sharded or is merged."""
    h = int.from_bytes(hashlib.sha256(f"split:{key}".encode()).digest()[:8], "big") / 2 ** 64
    return "test" if h < test_size else "train"


def prompt_side(rec, test_size: float) -> str:
    """A prompt record's side: its group's (prompts.load groups the run's prompts), or its own for a lone one."""
    return split_of(rec.group or groups([rec.users()])[0], test_size)


def _users(row: dict, where: str) -> list[str]:
    msgs = row.get("prompt")
    users = [m["content"] for m in msgs if isinstance(m, dict) and m.get("role") == "user"] \
        if isinstance(msgs, list) else []
    if not users or not all(isinstance(u, str) for u in users):
        raise UserError(f"{where + ': ' if where else ''}row {row.get('id')!r}: its `prompt` column has no user turn "
                        "(not a cai_gen row)")
    return users


def resplit(rows: list[dict], test_size: float, where: str = "") -> list[dict]:
    """Every row's split anew from its prompt column, grouped over all `rows` (ids.groups), at one test size: a
    merge of runs split at other sizes, or with other prompts, has no question on both sides. `where` names
    the file for the error."""
    keys = groups([_users(r, where) for r in rows])
    return [{**r, "split": split_of(k, test_size)} for r, k in zip(rows, keys)]


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
    else:
        ds = one(rows, columns)
    save_ds(ds, path)


def save_ds(ds, path: Path) -> None:
    """Save a Dataset or DatasetDict to a temp dir beside `path`, then swap it in."""
    import datasets

    # datasets saves an empty split as zero shards, which load_from_disk then cannot read: one shard each
    if isinstance(ds, datasets.DatasetDict):
        shards = {k: 1 if len(d) == 0 else None for k, d in ds.items()}
    else:
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


def save_splits_from_files(out: Path, copies: bool = True) -> None:
    """The run's datasets, built from its JSONL files through Arrow files on disk, not from Python rows: memory
    does not grow with the run. data/ (parquet per split, rundir.CONFIGS: what load_dataset(RUN) and the Hub read)
    always; the save_to_disk copies (layout as save_splits) when `copies`, else an old copy is removed."""
    import datasets

    datasets.disable_progress_bars()
    cache = Path(tempfile.mkdtemp(prefix="hf-", dir=out / rundir.WORK))
    try:
        def load(name: str, cols: list[str]):
            f = out / name
            if f.stat().st_size == 0:
                return datasets.Dataset.from_dict({c: [] for c in cols})
            return datasets.Dataset.from_json(str(f), cache_dir=str(cache), keep_in_memory=False)

        def side(ds, s: str):
            return ds.filter(lambda b: [x == s for x in b["split"]], batched=True, batch_size=2000)

        prefs, sft, kto = load(rundir.PREFS, PREF_COLUMNS), load(rundir.SFT, SFT_COLUMNS), load(rundir.KTO, KTO_COLUMNS)
        both = datasets.DatasetDict({f"{s}_{k}": side(d, s) for k, d in (("prefs", prefs), ("sft", sft))
                                     for s in ("train", "test")})
        kto = datasets.DatasetDict({s: side(kto, s) for s in ("train", "test")})
        save_parquet(out, {**{f: both[s] for c in ("default", "sft") for s, f in rundir.CONFIGS[c].items()},
                           **{f: kto[s] for s, f in rundir.CONFIGS["kto"].items()}})
        if copies:
            save_ds(both, out / rundir.PREFS_DIR)
            save_ds(kto, out / rundir.KTO_DIR)
        else:
            drop_splits(out)  # an earlier run's copies (what TRL loads) would disagree with the new JSONL
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def save_parquet(out: Path, files: dict[str, object]) -> None:
    """data/: each Dataset in `files` (path in the run dir -> Dataset) as one parquet file, all written to a temp dir
    and swapped in as a whole, so a reader sees the old data/ or the new one. Splits of one config come from one
    Dataset (filtered), so they have one set of columns, as load_dataset needs. An empty split gets no file (the
    card then names none): load_dataset fails on a config with a split of no rows ("corresponds to no data")."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{rundir.DATA}.", dir=out))
    try:
        for f, ds in files.items():
            if len(ds):
                ds.to_parquet(str(tmp / Path(f).relative_to(rundir.DATA)))
        tmp.chmod(0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_dir(tmp, out / rundir.DATA)


def drop_splits(out: Path) -> None:
    """Remove the datasets copies (preferences/, kto/) from a dir whose JSONL files were just written without
    them, so no stale copy is left beside them."""
    for name in (rundir.PREFS_DIR, rundir.KTO_DIR):
        if (out / name).is_dir():
            shutil.rmtree(out / name)


def save_splits(out: Path, prefs: list[dict], sft: list[dict], kto: list[dict], pref_columns: list[str]) -> None:
    """preferences/ = DatasetDict train_prefs / test_prefs / train_sft / test_sft (the published CAI datasets'
    layout: prompt-disjoint, so a model can be SFT'd and DPO'd and still be tested on unseen prompts); kto/ =
    train / test."""
    def side(rows: list[dict], s: str) -> list[dict]:
        return [r for r in rows if r["split"] == s]

    save_dataset(out / rundir.PREFS_DIR, {f"{s}_{kind}": (side(rows, s), cols) for kind, rows, cols in
                                       (("prefs", prefs, pref_columns), ("sft", sft, SFT_COLUMNS))
                                       for s in ("train", "test")})
    save_dataset(out / rundir.KTO_DIR, {s: (side(kto, s), KTO_COLUMNS) for s in ("train", "test")})


def write_dataset(out: Path, rows: list[dict], unpaired: list[dict], pref_columns: list[str],
                  copies: bool = True) -> None:
    """A dataset dir (a merge's, reviewed/) from its pairs and no-violation rows: their JSONL files, the SFT and
    KTO rows made from them, data/ and (copies) the save_to_disk copies; without copies an old copy is removed,
    as it would be stale beside the new files. A run streams the same files (Writer) and builds the rest from
    them (save_splits_from_files)."""
    sft, kto = training_rows(rows, unpaired)
    write_jsonl(out / rundir.PREFS, rows)
    write_jsonl(out / rundir.NO_VIOLATION, unpaired)
    write_jsonl(out / rundir.KTO, kto)
    write_jsonl(out / rundir.SFT, sft)
    if copies:
        save_splits(out, rows, sft, kto, pref_columns)
    else:
        drop_splits(out)


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
        "prompt_id": row.prompt.id,  # the prompt its id and randomness are keyed by
        "principle_ids": row.revised(),  # not a round the gate said NO to: nothing was revised there
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
        # per check: did the original and the chosen answer pass it (null: not asked of that answer)
        "checks": row.checks,
        "verified": verified(row.checks),
        "split": prompt_side(row.prompt, cfg.output.test_size),
        **extra,
    }


def fixed(results: list[dict]) -> list[str]:
    """The ids of the checks the rejected answer fails and the chosen one passes (the preview and card name them)."""
    return [r["id"] for r in results if r.get("original") is False and r.get("revision") is True]


def verified(results: list[dict]) -> bool:
    """The chosen answer passes a check the rejected one fails: a pair an outside signal vouches for."""
    return bool(fixed(results))


def run_config(run_dir: Path) -> dict:
    """A run dir's validated config as written (config.json); {} for a dir without one."""
    f = Path(run_dir) / rundir.CONFIG
    return json.loads(f.read_text()) if f.is_file() else {}


def run_test_size(run_dir: Path) -> float:
    """The test share a run dir was split with (0.1, the default, for runs written before splits existed)."""
    return (run_config(run_dir).get("output") or {}).get("test_size", 0.1)


def built_from(run_dir: Path) -> str:
    """A hash of the run files `review merge` builds reviewed/ from (preferences.jsonl, no_violation.jsonl): its
    stamp in reviewed/review.json, so a reviewed/ that a rerun has outdated is known as such."""
    h = hashlib.sha256()
    for name in (rundir.PREFS, rundir.NO_VIOLATION):
        f = Path(run_dir) / name
        h.update(f"{name}\0".encode())
        if f.is_file():
            with open(f, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()[:16]


def reviewed_stale(run_dir: Path) -> str | None:
    """Why RUN_DIR/reviewed/ does not describe the run's files (None: it does, or there is none)."""
    f = Path(run_dir) / rundir.REVIEWED / rundir.REVIEW
    if not (Path(run_dir) / rundir.REVIEWED).is_dir():
        return None
    try:
        stamp = json.loads(f.read_text()).get("built_from")
    except (OSError, ValueError, AttributeError):
        stamp = None
    if stamp is None:
        return "was written by an older cai_gen, without a stamp of the files it was built from"
    if stamp != built_from(run_dir):
        return "was built from another preferences.jsonl than the run's (the run was rerun since)"
    return None


def drop_stale_review(run_dir: Path) -> bool:
    """A rerun removes a reviewed/ its new files outdate (the verdicts stay in review.sqlite: `python -m
    cai_gen.review merge` rebuilds it on the new pairs); True when it did."""
    if reviewed_stale(run_dir) is None:
        return False
    shutil.rmtree(Path(run_dir) / rundir.REVIEWED)
    return True


def with_splits(rows: list[dict], test_size: float, where: str = "") -> list[dict]:
    """Rows read back from files with their split filled in where an older run had none (from their prompts,
    grouped over all `rows`)."""
    if all(r.get("split") for r in rows):
        return rows
    split = resplit(rows, test_size, where)
    return [r if r.get("split") else {**r, "split": s["split"]} for r, s in zip(rows, split)]


def rejected_row(row) -> dict:
    return {"id": row.id, "stage": row.stage, "reason": row.reason, "prompt": prompt_messages(row),
            "original": row.original or None, "principle_ids": row.principles[: max(len(row.critiques), 1)],
            "critiques": row.critiques, "gate": row.gate, "revision": row.draft,
            "similarity": row.similarity, "flags": row.flags, "domain": row.prompt.domain, "checks": row.checks,
            **({"judge": row.judge} if row.judge else {}), **({"reward": row.reward} if row.reward else {})}


def no_violation_row(row, created: str, test_size: float) -> dict:
    """A row the gate found nothing to fix in: its original stands (KTO desirable, SFT row), no pair."""
    return {"id": row.id, "prompt_id": row.prompt.id, "prompt": prompt_messages(row), "original": row.original,
            "principle_ids": row.principles[: len(row.critiques)], "critiques": row.critiques, "gate": row.gate,
            "flags": row.flags, "domain": row.prompt.domain, "created_at": row.done_at or created,
            "checks": row.checks, "split": prompt_side(row.prompt, test_size)}


def training_rows(prefs: list[dict], unpaired: list[dict]) -> tuple[list[dict], list[dict]]:
    """(sft, kto) of preference rows and no-violation rows, each list the pairs' rows first, then the
    no-violation rows. The one place these are built: the run's writer, cai_gen.merge and review merge all call
    it, so merged shards or a reviewed run hold exactly the rows a run would. A source row's `weight` (merge
    --half-life-days) goes with the rows built from it.

    SFT (SL-CAI trains on the revisions): prompt turns + final revision, and a no-violation original as it is.
    KTO is unpaired: the revision is a desirable completion, the original an undesirable one; a no-violation
    original is desirable. The checks have the last word: an answer a check failed on is undesirable, and
    nothing to imitate (no SFT row); a pair keeps its two KTO rows either way."""
    sft, kto = [], []
    for rows, origin in ((prefs, "revision"), (unpaired, "no_violation")):
        for r in rows:
            base = {"id": r["id"], "domain": r["domain"], "created_at": r["created_at"], "split": r["split"]}
            w = {"weight": r["weight"]} if "weight" in r else {}
            good = r["chosen"] if origin == "revision" else [{"role": "assistant", "content": r["original"]}]
            ok = desirable(r, "revision" if origin == "revision" else "original")
            if ok:
                sft.append({"messages": r["prompt"] + good, "id": r["id"], "domain": r["domain"], "origin": origin,
                            "created_at": r["created_at"], "split": r["split"], **w})
            kto.append({"prompt": r["prompt"], **base, "completion": good, "label": ok, **w})
            if origin == "revision":
                kto.append({"prompt": r["prompt"], **base, "completion": r["rejected"], "label": False, **w})
    return sft, kto
