"""Write a finished run: TRL-ready preference data, KTO rows, the trace, rejected pairs, summary.

Every final file is written to a temp name and renamed into place, so a half-written file never exists.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import tempfile
from array import array
from pathlib import Path

from .checks import desirable
from .errors import UserError
from . import routing, rundir
from .ids import groups
from .yamlio import jsonl_rows

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


def verified(results: list[dict]) -> bool:
    """The chosen answer passes a check the rejected one fails: a pair an outside signal vouches for."""
    return any(r["original"] is False and r["revision"] is True for r in results)


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


# the run's files, each written as parts while the run goes (work/parts/) and renamed into place at the end;
# two parts where a file is two sections (pairs' rows first, then the no-violation rows), as one-chunk runs write it
PARTS = {rundir.PREFS: ["preferences"], rundir.KTO: ["kto_pairs", "kto_nv"], rundir.REJECTED: ["rejected"],
         rundir.NO_VIOLATION: ["no_violation"], rundir.SFT: ["sft_pairs", "sft_nv"], rundir.TRACE: ["trace"]}


class Writer:
    """Streams a run's rows to its files chunk by chunk, so a chunk's rows can be released once written: memory
    stays flat however long the run. Files appear (renamed into place) only when the run finishes; the datasets
    copies, review queue, card and plots are then built from the files."""

    def __init__(self, out: Path, cfg, const):
        self.out, self.cfg, self.const = out, cfg, const
        self.dir = out / rundir.WORK / rundir.PARTS
        shutil.rmtree(self.dir, ignore_errors=True)  # parts of an interrupted run: rebuilt from the ledger
        self.dir.mkdir(parents=True)
        # output.length_balance=match is decided once over the whole run, after the last chunk (a chunk's own
        # balance is not the run's): until then every pair is written as kept; held in memory are only its
        # (id, chosen words, rejected words) and row numbers, and its rejected.jsonl row waits on disk (part
        # "balance") in case finish() drops it
        self.balanced = cfg.output.length_balance == "match"
        names = [p for ps in PARTS.values() for p in ps] + (["balance"] if self.balanced else [])
        self.f = {p: open(self._part(p), "w", encoding="utf-8") for p in names}
        self.n = {"rows": 0, "kept": 0, "rejected": 0, "no_violation": 0}
        self.pairs: list[tuple[str, int, int]] = []  # per kept pair, in file order: (id, chosen, rejected words)
        self.pair_at, self.rejected_at = array("q"), array("q")  # run row number of each pair, each rejected row
        self.review_dropped = False  # finish(): a stale reviewed/ was removed

    def _part(self, part: str) -> Path:
        return self.dir / f"{part}.jsonl"

    def _put(self, part: str, rows) -> None:
        self.f[part].writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    def add(self, rows: list, kept: list, rejected: list, ended: list, created: str) -> None:
        """One chunk's rows, each list in prompt order."""
        ts = self.cfg.output.test_size
        prefs = [preference(r, self.cfg, self.const, created) for r in kept]
        unpaired = [no_violation_row(r, created, ts) for r in ended]
        self._put("preferences", prefs)
        # each file is the pairs' rows, then the no-violation rows (PARTS), as training_rows orders one chunk
        for part, src in (("pairs", (prefs, [])), ("nv", ([], unpaired))):
            sft, kto = training_rows(*src)
            self._put(f"sft_{part}", sft)
            self._put(f"kto_{part}", kto)
        self._put("rejected", (rejected_row(r) for r in rejected))
        self._put("no_violation", unpaired)
        if self.balanced:
            at = {r.id: self.n["rows"] + i for i, r in enumerate(rows)}
            self.pairs += [(p["id"], len(p["chosen"][0]["content"].split()), len(p["rejected"][0]["content"].split()))
                           for p in prefs]
            self.pair_at.extend(at[r.id] for r in kept)
            self.rejected_at.extend(at[r.id] for r in rejected)
            self._put("balance", ({**rejected_row(r), "stage": "length_balance", "reason": "length_balance"}
                                  for r in kept))
        if self.cfg.output.trace:
            self._put("trace", ({"id": r.id, "prompt_id": r.prompt.id, "sample": r.sample,
                                 "principle_ids": r.principles, "stages": r.trace,
                                 "outcome": r.reason or r.end or "kept"} for r in rows))
        for k, v in (("rows", rows), ("kept", prefs), ("rejected", rejected), ("no_violation", unpaired)):
            self.n[k] += len(v)
        for f in self.f.values():
            f.flush()  # the chunk is on disk (the OS's cache) before its rows are released

    def close(self) -> None:
        for f in self.f.values():
            f.close()

    def finish(self, created: str, drop: set[str] = frozenset()) -> dict:
        """Put the files in place, then what is built from them: review queue, datasets copies. `drop`: ids of
        kept pairs the run-wide length balance removes (quality.length_balance over self.pairs)."""
        self.close()
        if drop:
            self._drop(drop)
        out, cfg, const = self.out, self.cfg, self.const
        atomic_write(out / rundir.CONFIG, json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
        atomic_write(out / rundir.CONSTITUTION, json.dumps({"ref": const.ref, **const.model_dump(mode="json")},
                                                           indent=2, ensure_ascii=False) + "\n")
        for name, parts in PARTS.items():
            if name == rundir.TRACE and not cfg.output.trace:
                # an earlier run's trace would describe rows this run may have changed: what is not written goes
                (out / name).unlink(missing_ok=True)
                continue
            _concat([self._part(p) for p in parts], out / name)
        self.review_dropped = drop_stale_review(out)  # expert data on the old pairs would be published as this run's
        # pairs routed to expert review (python -m cai_gen.review serve); rewritten on every run from `review:`
        write_jsonl(out / rundir.REVIEW_QUEUE, routing.queue(jsonl_rows(out / rundir.PREFS), cfg.review,
                                                               cfg.seed, const))
        save_splits_from_files(out, copies=cfg.output.save_dataset)
        shutil.rmtree(self.dir, ignore_errors=True)
        return {**self.n, "model": cfg.model.name, "constitution": const.ref, "created_at": created}

    def _drop(self, drop: set[str]) -> None:
        """Take the dropped pairs out of the pair parts and put their rows into rejected (at their place in
        prompt order, as one chunk would have written them) and their trace's outcome: the files come out as a
        run balanced in one chunk writes them. Lines are streamed; only line numbers are held."""
        gone = [k for k, (i, _, _) in enumerate(self.pairs) if i in drop]
        pairs = set(gone)
        _rewrite(self._part("preferences"), lambda n, line: None if n in pairs else line)
        ids = {self.pairs[k][0] for k in gone}  # not by line: a pair whose chosen fails a check has no SFT row
        _rewrite(self._part("sft_pairs"), lambda n, line: None if json.loads(line)["id"] in ids else line)
        _rewrite(self._part("kto_pairs"), lambda n, line: None if n // 2 in pairs else line)  # two per pair
        if self.cfg.output.trace:  # trace line n is the run's row n
            at = {self.pair_at[k] for k in gone}

            def outcome(n: int, line: str) -> str:
                return line if n not in at else json.dumps({**json.loads(line), "outcome": "length_balance"},
                                                           ensure_ascii=False) + "\n"
            _rewrite(self._part("trace"), outcome)
        # two streams, each in row order (the filters' rejected rows, the dropped pairs' rows), merged by row number
        balance = (line for k, line in enumerate(_lines(self._part("balance"))) if k in pairs)
        merged = heapq.merge(zip(self.rejected_at, _lines(self._part("rejected"))),
                             zip((self.pair_at[k] for k in gone), balance), key=lambda t: t[0])
        _rewrite(self._part("rejected"), None, (line for _, line in merged))
        self.n["kept"] -= len(gone)
        self.n["rejected"] += len(gone)


def _lines(path: Path):
    with open(path, encoding="utf-8") as f:
        yield from f


def _rewrite(path: Path, edit, lines=None) -> None:
    """Rewrite a part file line by line: edit(line number, line) -> the line to write or None; or `lines`."""
    tmp = path.with_name(path.name + ".new")
    with open(tmp, "w", encoding="utf-8") as f:
        src = lines if lines is not None else (edit(n, line) for n, line in enumerate(_lines(path)))
        f.writelines(line for line in src if line is not None)
    os.replace(tmp, path)


def _concat(parts: list[Path], dest: Path) -> None:
    """The parts, in order, as one file renamed into place (readers see the old file or the whole new one)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    with os.fdopen(fd, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)


def write_summary(out: Path, summary: dict) -> None:
    atomic_write(out / rundir.SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
