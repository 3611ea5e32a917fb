"""The one exception type that reaches users as a single line.

Anything a user can get wrong (a region, a date, a checkpoint, a path) raises :class:`UserError`
with a message that says what is wrong and how to fix it. The CLI prints it as one line on stderr
and exits with status 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unmet precondition, reported to the user as one line (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
