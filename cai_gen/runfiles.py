"""A run's files, streamed: each chunk's rows appended to parts (work/parts/) as the run goes, renamed into place
when it finishes, and what is built from them (review queue, datasets) then. Row shapes and the datasets
writes are store.py's.
"""
from __future__ import annotations

import heapq
import json
import os
import shutil
import tempfile
from array import array
from pathlib import Path

from . import routing, rundir
from .store import (atomic_write, drop_stale_review, no_violation_row, preference, rejected_row,
                    save_splits_from_files, training_rows, write_jsonl)
from .yamlio import jsonl_rows


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
