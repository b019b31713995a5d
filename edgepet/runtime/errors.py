"""The one exception type for input a person can fix (the CLI's exit code 2)."""

from __future__ import annotations


class BadInputError(ValueError):
    """Export or load failed because of the input, not edgepet.

    The message says what failed, why, and what to do; the CLI prints it and exits
    with code 2. Anything else that escapes is an internal error (exit code 1).
    """


__all__ = ["BadInputError"]
