"""sert's messages: every library module logs through ``logging.getLogger("sert.<module>")``; the command
line configures it once (:func:`configure`: ``--quiet`` keeps warnings and errors, ``--verbose`` adds
debug lines). Progress bars (tqdm) are not log lines and stay.

Formats, as the command line has always printed them: an info line ``[sert] <message>``, a warning
``sert: warning: <message>``. Used as a library, sert adds no handler: its warnings reach Python's
last-resort handler (stderr) and its info lines appear once the caller configures logging
(``logging.basicConfig(level=logging.INFO)``, or :func:`configure`).
"""
from __future__ import annotations

import logging
import sys

ROOT = "sert"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"sert: error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"sert: warning: {msg}"
        return f"[sert] {msg}"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is emitted (a test's capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler assigns it; the property always reads sys.stderr
        pass


def configure(verbosity: int = 0) -> int:
    """The command line's logging: ``verbosity`` -1 (``--quiet``: warnings and errors), 0 (info), 1
    (``--verbose``: debug). Idempotent: one handler on the ``sert`` logger, its level set again.
    Returns the level it replaced (:func:`restore` puts it back: ``sert.cli.main`` called in-process)."""
    logger = logging.getLogger(ROOT)
    before = logger.level
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        h = _Stderr()
        h.setFormatter(_Format())
        logger.addHandler(h)
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False
    return before


def restore(level: int) -> None:
    logging.getLogger(ROOT).setLevel(level)


def get(name: str) -> logging.Logger:
    """The logger of a sert module (``get(__name__)``)."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
