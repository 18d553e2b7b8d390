"""The one exception type a user sees: a one-line message naming the file, column or key."""


class ClrpipeError(Exception):
    """Bad input or configuration; the CLI prints the message on one line and exits non-zero."""
