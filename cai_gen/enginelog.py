"""A quiet terminal: while the engine runs, everything written to file descriptors 1 and 2 (vLLM's and
Triton's log lines, NUMA and tcmalloc warnings, the engine's worker processes, which inherit the descriptors)
goes to `engine.log` in the run dir. cai_gen's own progress and messages go to the terminal through the
tracker's console, which is pointed at a copy of the original stderr. `verbose=true` turns this off.

An engine failure reaches the terminal as one line naming the log; the traceback is in the log.
"""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


@contextmanager
def to_log(path: Path, console):
    sys.stdout.flush()
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved_out, saved_err = os.dup(1), os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
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
        traceback.print_exc()  # into the log, beside the engine's own messages
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"engine: {type(e).__name__}: {first} (full log: {path})") from None
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
