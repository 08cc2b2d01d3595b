"""One exception type for every user-facing error, and the one place where faults of the
environment (a full disk, a permission, a read-only or missing file, a corrupt checkpoint,
invalid UTF-8, memory) become such an error.

The CLI turns a :class:`SertError` into a one-line message on stderr and its exit status
(2: the user's input or environment, which the user can fix; 1: a fault that is not the
user's, e.g. an I/O error of the disk), never a traceback; library callers can catch it like
any exception. :func:`environment_error` maps the exceptions the OS, safetensors, torch and
the codecs raise to one line naming the path and what to do; :class:`sert.io.RunLock` applies
it with the run directory it guards (so a fault without a file name still names where it
happened) and ``sert.cli.main`` applies it to whatever reaches it.
"""
from __future__ import annotations

import difflib
import errno
import re
from pathlib import Path
from typing import Iterable


class SertError(Exception):
    """A problem with the user's input or environment, reported in one line.

    ``status``: the exit status the CLI gives it (2 by default; 1 for faults that are not the user's)."""

    def __init__(self, message: str = "", status: int = 2):
        super().__init__(message)
        self.status = status


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


_RESUME = "then rerun the same command: it keeps what is complete"
# errno -> (what happened, what to do, exit status)
_ERRNO: dict[int, tuple[str, str, int]] = {
    errno.ENOSPC: ("no space left on the device", f"free space there (or use another --out), {_RESUME}", 2),
    errno.EDQUOT: ("disk quota exceeded", f"free space there (or use another --out), {_RESUME}", 2),
    errno.EFBIG: ("file too large for the file system", "use another --out on a file system without that limit", 2),
    errno.EROFS: ("read-only file system", "use another --out on a writable file system", 2),
    errno.EACCES: ("permission denied", "check its permissions, or use another --out", 2),
    errno.EPERM: ("operation not permitted", "check its permissions, or use another --out", 2),
    errno.ENOENT: ("no such file or directory", "check the path (was it deleted or moved meanwhile?)", 2),
    errno.ENOTDIR: ("a part of the path is not a directory", "check the path", 2),
    errno.EISDIR: ("is a directory, expected a file", "check the path", 2),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path", 2),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and rerun", 1),
    errno.ENFILE: ("too many open files in the system", "close some programs and rerun", 1),
    errno.EIO: ("input/output error", "the disk or file system failed: check it (dmesg), then rerun", 1),
    errno.ENOMEM: ("out of memory", "free memory or lower the batch sizes, then rerun", 1),
}


def text_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def _where(exc: BaseException, where) -> str:
    name = getattr(exc, "filename", None)
    if name is not None:
        other = getattr(exc, "filename2", None)
        return f"{name}" + (f" -> {other}" if other is not None else "")
    return f"{where}" if where is not None else ""


def _errno_error(code: int | None, strerror: str | None, place: str, detail: str = "") -> SertError:
    what, advice, status = _ERRNO.get(code, (None, "check the file system, then rerun", 1))
    what = what or (strerror or "an operating-system error").lower()
    lead = f"{place}: " if place else ""
    if code == errno.ENOSPC and not place:
        advice = f"free space on the output's file system (or use another --out), {_RESUME}"
    return SertError(f"{lead}{what}{detail}; {advice}", status)


def _disk_full(where) -> bool:
    import shutil

    try:
        return where is not None and shutil.disk_usage(Path(where)).free < 64 * 2**20
    except OSError:
        return False


def environment_error(exc: BaseException, where: str | Path | None = None) -> SertError | None:
    """The one-line :class:`SertError` for a fault of the environment, or None for anything else
    (a bug, which keeps its traceback). ``where``: the directory being written, named when the
    exception itself names no file (a full disk during a buffered write, safetensors, torch)."""
    if isinstance(exc, SertError):
        return exc
    lead = f"{where}: " if where is not None else ""
    if isinstance(exc, UnicodeDecodeError):  # the readers name file and line; this is the fallback
        return SertError(f"{lead}invalid UTF-8 in an input file ({exc.reason} at byte "
                         f"{exc.start}); save the file as UTF-8")
    if isinstance(exc, OSError):
        if isinstance(exc, ConnectionError):  # the network clients retry and report these themselves
            return None
        if exc.errno is None:  # a library's own OSError (no errno): its first line, not the user's fault
            first = text_line(exc)
            return SertError(f"{lead}{first}; check the path and the file system, then rerun", 1)
        return _errno_error(exc.errno, exc.strerror, _where(exc, where))
    name = type(exc).__name__
    text = str(exc)
    if name == "SafetensorError":
        m = re.search(r"os error (\d+)", text)
        if m:
            return _errno_error(int(m.group(1)), None, _where(exc, where), " (writing a safetensors file)")
        if "deserializ" in text or "header" in text.lower():
            return SertError(f"{lead}a safetensors file cannot be read ({text}): it is "
                             "truncated or corrupt; copy it again or retrain it")
        return None
    if isinstance(exc, RuntimeError) and re.search(r"inline_container|PytorchStreamWriter|file write failed", text):
        if _disk_full(where):  # torch's zip writer hides the errno; a nearly full device explains it
            return _errno_error(errno.ENOSPC, None, f"{where}", " (writing a PyTorch file)")
        return SertError(f"{lead}a PyTorch file could not be written ({text.strip()[:120]}); "
                         "check the file system, then rerun", 1)
    if isinstance(exc, RuntimeError) and re.search(r"PytorchStreamReader|failed finding central directory", text):
        return SertError(f"{lead}a PyTorch file cannot be read ({text.strip()[:120]}): it "
                         "is truncated or corrupt; delete it (a checkpoint: its directory) and rerun")
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError":
        return SertError("out of memory" + (f" ({text.strip().splitlines()[0][:120]})" if text.strip() else "")
                         + "; lower the batch sizes (eval.batch_size, mine.batch_questions, train.batch_size with "
                         "train.grad_accum) or free memory, then rerun the same command", 1)
    return None
