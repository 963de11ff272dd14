"""A quiet terminal: while the engine runs, everything written to file descriptors 1 and 2 (vLLM's and
Triton's log lines, NUMA and tcmalloc warnings, the engine's worker processes, which inherit the descriptors)
goes to `engine.log` in the run dir. cai_gen's own progress and messages go to the terminal through the
tracker's console, which is pointed at a copy of the original stderr. `verbose=true` turns this off.

An engine failure reaches the terminal as one line naming the log; the traceback is in the log.
"""
from __future__ import annotations

import os
import re
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from .errors import Resumable, UserError


ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")


def root_cause(path: Path, start: int, last: str) -> str | None:
    """The first exception line this scope wrote to the log: an engine's worker dies with the real reason
    ("ValueError: Available memory ... is less than desired") and the main process then raises a generic
    "Engine core initialization failed. See root cause above", which alone tells a user nothing."""
    with open(path, "rb") as f:
        f.seek(start)
        for raw in f:
            m = ERROR_LINE.match(raw.decode("utf-8", "replace").strip())
            if m and m.group(2)[:200] != last:
                return f"{m.group(1)}: {m.group(2)[:300]}"
    return None


@contextmanager
def to_log(path: Path, console):
    sys.stdout.flush()
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved_out, saved_err = os.dup(1), os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    start = os.fstat(log).st_size
    term = os.fdopen(os.dup(saved_err), "w", buffering=1, encoding="utf-8", errors="replace")
    before = console.file
    console.file = term
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:
        with open(path, "a", encoding="utf-8") as f:
            traceback.print_exc(file=f)  # into the log, beside the engine's own messages
        first = (str(e).strip().splitlines() or [""])[0][:200]
        cause = root_cause(path, start, first)
        # Resumable: what the engine finished before it failed is in the ledger; the entry point says how to go on
        raise Resumable(f"engine: {cause or f'{type(e).__name__}: {first}'} (full log: {path})") from None
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        console.file = before
        term.close()
        if path.exists() and path.stat().st_size == 0:
            path.unlink()  # no engine started (a re-filter): no empty log
