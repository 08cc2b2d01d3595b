"""One exception type for every user-facing error.

The CLI turns a :class:`SertError` into a one-line message on stderr and exit
status 2 (no traceback); library callers can catch it like any exception.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class SertError(Exception):
    """A problem with the user's input or environment, reported in one line."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
