"""The one error type for mistakes a user can make (bad config, bad data, missing model)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LowtuneError(Exception):
    """A user-facing error: the message says what was wrong, where, and what to do.

    The CLI prints it on one line, in red, and exits with `exit_code` without a traceback.
    """

    exit_code = 2


class TrainingStopped(LowtuneError):
    """Training stopped early (a signal, or a non-finite loss); the message says what was kept."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' — did you mean X?' for the closest of `choices`, or a list of valid ones."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" — did you mean {close[0]}?"
    if len(choices) <= 12:
        return f" (valid: {', '.join(choices)})"
    return ""
