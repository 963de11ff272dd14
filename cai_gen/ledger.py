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

from .backends import Conversation, Generation, Params
from .errors import UserError


def request_key(model: str, conv: Conversation, params: Params) -> str:
    p = asdict(params)
    if p.get("choices") is None:
        p.pop("choices", None)  # keeps keys of ledgers written before `choices` existed valid
    blob = json.dumps([model, conv, p], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read(path: Path, done: dict[str, Generation]) -> int:
    """Load one ledger file into `done`; returns the length of its whole lines (a torn tail is ignored)."""
    data = path.read_bytes()
    good = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is dropped
    for line in data[:good].splitlines():
        try:
            rec = json.loads(line)
            done[rec["key"]] = Generation(**rec["gen"])
        except (ValueError, KeyError, TypeError):
            continue  # a damaged line costs one regeneration, not the run
    return good


def saved(work: Path) -> int:
    """Whole lines in every ledger file of a run's work dir: what a rerun will reuse."""
    n = 0
    for f in work.glob("generations*.jsonl"):
        with open(f, "rb") as fh:
            n += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    return n


class Ledger:
    """Writes to `path`; also reads every other `generations*.jsonl` beside it: the local executor's
    `generations.jsonl` and the `generations-<id>.jsonl` segments of executor=ray's replicas (one file each, so
    they never share a file). So any executor resumes any other's work, in both directions."""

    def __init__(self, path: Path, fsync_every: int = 64):
        self.path, self.fsync_every, self.pending = path, fsync_every, 0
        self.done: dict[str, Generation] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        for seg in sorted(path.parent.glob("generations*.jsonl")):
            if seg != path:
                _read(seg, self.done)
        if path.exists():
            good = _read(path, self.done)
            if good != path.stat().st_size:
                with open(path, "r+b") as f:
                    f.truncate(good)  # then overwritten by the next line
        self.f = None  # opened at the first new generation: a fully resumed run leaves no empty file
        self.broken = False  # a write failed: nothing more is synced (the error was raised once)

    def _file(self):
        if self.f is None:
            self.f = open(self.path, "a", encoding="utf-8")
        return self.f

    def get(self, key: str) -> Generation | None:
        return self.done.get(key)

    def add(self, key: str, gen: Generation) -> Generation:
        """Commit a finished generation, stamped with the time it finished; returns the stamped one (the flows
        keep that, so a fresh run and its rerun from the ledger write the same created_at)."""
        if gen.done_at is None:
            gen = replace(gen, done_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.done[key] = gen
        try:
            f = self._file()
            f.write(json.dumps({"key": key, "gen": asdict(gen)}, ensure_ascii=False) + "\n")
            f.flush()
        except OSError as e:  # disk full, quota, a vanished mount: the lines before this one are safe
            self.broken = True
            raise UserError(f"{self.path}: cannot write ({e.strerror or e}); {saved(self.path.parent)} generations "
                            "saved; free space and rerun the same command to resume") from None
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
        if self.f is not None and not self.f.closed:
            try:
                self.sync()
                self.f.close()
            except OSError:
                pass  # a broken write already said so; closing must not raise over it
