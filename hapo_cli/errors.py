"""User-facing errors: the CLI prints `HapoError` as one line (tracebacks only with --debug)."""


class HapoError(Exception):
    """A problem the user can fix; the message says what to do, on one line."""
