"""The one exception type for user mistakes: __main__ prints it as one line and exits 2, no traceback."""


class UserError(Exception):
    pass
