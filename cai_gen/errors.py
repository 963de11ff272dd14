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


class ArgParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line and exit 2, like every other user error here (argparse itself prints
    the usage and the error over two lines). Subcommands get the same class (add_subparsers uses type(self))."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (--help shows the options)", file=sys.stderr)
        sys.exit(2)
