"""The one exception type a user sees: a one-line message naming the file, column or key."""

from __future__ import annotations

__all__ = ["ClrpipeError", "first_line"]


class ClrpipeError(ValueError):
    """Bad input or configuration; the CLI prints the message on one line and exits non-zero.

    A `ValueError`: misuse is a bad value, and a caller's `except ValueError` catches it. No
    `except ValueError` in clrpipe guards code that raises it (`tests/test_errors.py`)."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
