"""The exception types for user mistakes: __main__ prints them as one line and exits 2, no traceback."""


class UserError(Exception):
    pass


class Resumable(UserError):
    """A run stopped after finished work was saved (engine failure, an endpoint that gave up, a Ray replica):
    the message says what went wrong; the entry point adds how much is saved and the command that resumes,
    which only it knows (the run dir may be a fresh timestamped one that "the same command" would not reopen)."""
