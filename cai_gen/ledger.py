"""Crash safety: an append-only ledger of every finished generation, keyed by a content hash of its request.

The key covers the model, the full conversation sent (prompt, few-shot turns, principle texts, earlier stage
outputs) and the sampling params, so a rerun reuses exactly the generations whose request is unchanged and
regenerates the rest. Lines are flushed as each request finishes and fsynced every `fsync_every` lines and at
the end of each stage: a kill -9 loses at most the requests in flight plus the unsynced tail, never a row twice.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from . import rundir
from .backends import Conversation, Generation, Params
from .errors import Resumable, UserError


def request_key(model: str, conv: Conversation, params: Params) -> str:
    p = asdict(params)
    for k in ("choices", "loop_stop"):
        if p.get(k) is None:
            p.pop(k, None)  # keeps keys of ledgers written before these fields existed valid
    blob = json.dumps([model, conv, p], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _scan(path: Path, fileno: int, index: dict[bytes, int]) -> int:
    """Index one ledger file: key -> (file number, byte offset of its line); returns the length of its whole
    lines (a torn tail is ignored). Read in blocks, never whole: a ledger of millions of lines stays cheap."""
    good = pos = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # a torn last line (killed mid-write) is dropped
            try:
                rec = json.loads(line)
                Generation(**rec["gen"])  # a damaged line costs one regeneration, not the run
                index[bytes.fromhex(rec["key"])] = fileno << OFFSET_BITS | pos
            except (ValueError, KeyError, TypeError):
                pass
            pos += len(line)
            good = pos
    return good


OFFSET_BITS = 44  # byte offsets up to 16 TB per file; the file number above them


def saved(work: Path) -> int:
    """Whole lines in every ledger file of a run's work dir: what a rerun will reuse."""
    n = 0
    for f in work.glob(rundir.LEDGER_SEGMENTS):
        with open(f, "rb") as fh:
            n += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    return n


class Ledger:
    """Writes to `path`; also reads every other `generations*.jsonl` beside it: the local executor's
    `generations.jsonl` and the `generations-<id>.jsonl` segments of executor=ray's replicas (one file each, so
    they never share a file). So any executor resumes any other's work, in both directions."""

    def __init__(self, path: Path, fsync_every: int = 64):
        self.path, self.fsync_every, self.pending = path, fsync_every, 0
        # key -> where its line is, not the generation: memory is ~100 bytes per generation, not its text
        self.index: dict[bytes, int] = {}
        self.files: list[Path] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        for seg in sorted(path.parent.glob(rundir.LEDGER_SEGMENTS)):
            if seg != path:
                self.files.append(seg)
                _scan(seg, len(self.files) - 1, self.index)
        self.files.append(path)
        if path.exists():
            good = _scan(path, len(self.files) - 1, self.index)
            if good != path.stat().st_size:
                with open(path, "r+b") as f:
                    f.truncate(good)  # then overwritten by the next line
        self.readers: dict[int, object] = {}
        self.f = None  # opened at the first new generation: a fully resumed run leaves no empty file
        self.broken = False  # a write failed: nothing more is synced (the error was raised once)

    def __len__(self) -> int:
        return len(self.index)

    def _file(self):
        if self.f is None:
            self.f = open(self.path, "ab")
        return self.f

    def get(self, key: str) -> Generation | None:
        at = self.index.get(bytes.fromhex(key))
        if at is None:
            return None
        n, off = at >> OFFSET_BITS, at & ((1 << OFFSET_BITS) - 1)
        if n == len(self.files) - 1 and self.f is not None:
            self.f.flush()  # a line this run wrote may still sit in the write buffer
        r = self.readers.get(n) or self.readers.setdefault(n, open(self.files[n], "rb"))
        r.seek(off)
        return Generation(**json.loads(r.readline())["gen"])

    def add(self, key: str, gen: Generation) -> Generation:
        """Commit a finished generation, stamped with the time it finished; returns the stamped one (the flows
        keep that, so a fresh run and its rerun from the ledger write the same created_at)."""
        if gen.done_at is None:
            gen = replace(gen, done_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        try:
            f = self._file()
            off = f.tell()
            f.write((json.dumps({"key": key, "gen": asdict(gen)}, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
        except OSError as e:  # disk full, quota, a vanished mount: the lines before this one are safe
            self.broken = True
            # the entry point adds how much is saved and the command that resumes (this run dir, by name)
            raise Resumable(f"{self.path}: cannot write ({e.strerror or e}); free space, then resume") from None
        self.index[bytes.fromhex(key)] = (len(self.files) - 1) << OFFSET_BITS | off
        self.pending += 1
        if self.pending >= self.fsync_every:
            self.sync()
        return gen

    def sync(self) -> None:
        if self.f is None or self.f.closed or self.broken:
            return
        self.f.flush()
        os.fsync(self.f.fileno())
        self.pending = 0

    def close(self) -> None:
        for r in self.readers.values():
            r.close()
        self.readers = {}
        if self.f is not None and not self.f.closed:
            try:
                self.sync()
                self.f.close()
            except OSError:
                pass  # a broken write already said so; closing must not raise over it
