"""The one exception type for mistakes a user can make."""


class InterpError(Exception):
    """A user-facing error. The message says what was wrong and what to do about it.

    The CLI prints it as one line and exits with status 1; library callers can catch it.
    """
