"""One process per run dir: two runs started into one dir would generate the same requests twice and append to
one ledger. The second refuses in one line naming the holder.

The lock is an OS advisory lock (flock) on `work/lock`, so it goes away with its process however that process
ends, kill -9 included: a lock whose holder is gone is simply taken over, with nothing to clean up. The file
also says who holds it (pid, host, start time) for the message; it is not the lock itself.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from . import rundir
from .errors import UserError


class RunLock:
    def __init__(self, out_dir: Path):
        self.path = out_dir / rundir.WORK / rundir.LOCK
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{self.path.parent.parent}: in use by another cai_gen run ({holder}); wait for it to "
                            "finish or stop it, or use another run dir") from None
        except OSError:
            pass  # a filesystem without flock: run unlocked rather than not at all
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock; the file stays (its content is only informative)
            self.fd = None


def _holder(fd: int) -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {h['pid']} on {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
