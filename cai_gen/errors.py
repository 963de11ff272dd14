"""The exception types for user mistakes: __main__ prints them as one line and exits 2, no traceback."""
from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    pass


class Resumable(UserError):
    """A run stopped after finished work was saved (engine failure, an endpoint that gave up, a Ray replica):
    the message says what went wrong; the entry point adds how much is saved and the command that resumes,
    which only it knows (the run dir may be a fresh timestamped one that "the same command" would not reopen)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler's preemption) stops a run the way Ctrl-C does: the engine is closed
    (its worker processes would otherwise outlive us, holding their memory), the ledger stays whole, and one line
    says what is saved; exit 143 (128 + SIGTERM) instead of 130."""


def stop_on_sigterm() -> None:
    """An entry point's first step: SIGTERM raises Terminated in the main thread (Python's default just dies)."""
    import signal

    def _raise(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, _raise)


def stop_code(e: BaseException) -> int:
    """The exit status of a stopped run: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if isinstance(e, Terminated) else 130


class ArgParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line and exit 2, like every other user error here (argparse itself prints
    the usage and the error over two lines). Subcommands get the same class (add_subparsers uses type(self))."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (--help shows the options)", file=sys.stderr)
        sys.exit(2)
