"""Artifacts on disk: atomic writes, append-only JSONL logs, run-directory locks.

Every artifact is either written atomically (temp file in the same directory,
fsync, rename) or is an append-only JSONL log whose torn last line (a process
killed mid-write) is detected and dropped on the next read. A write that fails (a full
disk) leaves the old file, or the log as it was before the append, and names its file;
a text file that is not UTF-8 is an error naming its file and line.

Readers (:func:`read_text`, :func:`read_json`, :func:`iter_jsonl`) also take a file compressed
with xz (``.xz``) or gzip (``.gz``) and decompress it transparently: the vendored data and the
committed experiment artifacts are stored that way.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import lzma
import os
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import SertError, environment_error


TEMP_TAG = "sert-"  # temp files are ``.NAME.sert-XXXX.tmp``: only those are ever cleaned up


def ensure_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SertError(f"cannot create output directory {p}: {e.strerror}") from None
    if not os.access(p, os.W_OK):
        raise SertError(f"output directory {p} is not writable")
    return p


def invalid_utf8(path: str | os.PathLike) -> SertError:
    """The error for a text file that is not UTF-8, naming its file, line and column (call it in
    an ``except UnicodeDecodeError``: the codec's own position is relative to a buffer)."""
    p = Path(path)
    try:
        data = p.read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return SertError(f"{p}:{line}: invalid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); "
                         "save the file as UTF-8")
    except OSError:
        pass
    return SertError(f"{p}: invalid UTF-8; save the file as UTF-8")


def reads_utf8(param: str):
    """Decorator of a reader: a ``UnicodeDecodeError`` inside it becomes :func:`invalid_utf8` of its
    argument ``param`` (the file it reads): one line naming file, line and column."""
    import functools
    import inspect

    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UnicodeDecodeError:
                raise invalid_utf8(sig.bind(*args, **kwargs).arguments[param]) from None
        return wrapper
    return deco


def _named(e: OSError, path: Path) -> OSError:
    """``e`` with ``path`` as its file name when it has none (a failed write names no file)."""
    if e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror, str(path))
    return e


def _read_umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


_UMASK = _read_umask()  # read once, at import: os.umask is process-wide and not thread-safe


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    p = Path(path)
    ensure_dir(p.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{TEMP_TAG}", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _named(e, p) from e
        raise
    return p


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def atomic_save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (a kill never leaves half a picture) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.sert-{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _named(e, path) from e
        raise
    finally:
        plt.close(fig)
    return path


COMPRESSED = {".xz": lzma.open, ".gz": gzip.open}  # suffix -> opener; anything else is read as is


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a UTF-8 text file for reading, decompressing a ``.xz`` or ``.gz`` file on the fly."""
    p = Path(path)
    opener = COMPRESSED.get(p.suffix.lower())
    if opener is None:
        return open(p, encoding="utf-8")
    return opener(p, "rt", encoding="utf-8")


@contextlib.contextmanager
def _damaged(p: Path):
    """A truncated or corrupt compressed file: one line naming it, not a decompressor's traceback."""
    try:
        yield
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, zlib.error) as e:
        if p.suffix.lower() not in COMPRESSED:
            raise
        raise SertError(f"{p}: damaged {p.suffix[1:]} file ({type(e).__name__}: {e})") from None


def read_text(path: str | os.PathLike) -> str:
    """The whole text of a file (see :func:`open_text`)."""
    p = Path(path)
    try:
        with _damaged(p), open_text(p) as f:
            return f.read()
    except FileNotFoundError:
        raise SertError(f"{p}: file not found") from None


def read_json(path: str | os.PathLike) -> Any:
    p = Path(path)
    try:
        return json.loads(read_text(p))
    except json.JSONDecodeError as e:
        raise SertError(f"{p}:{e.lineno}: malformed JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise invalid_utf8(p) from None


def iter_jsonl(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> Iterator[dict]:
    """Yield the objects of a JSONL file.

    A malformed line is an error naming file and line, except a final line with
    no newline when ``tolerate_torn_tail`` is set: that is a write cut short by a
    kill, and it is dropped (the caller redoes that record).
    """
    for _, obj in iter_jsonl_numbered(path, tolerate_torn_tail=tolerate_torn_tail):
        yield obj


def iter_jsonl_numbered(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """:func:`iter_jsonl` with each object's line number (blank lines are skipped, not renumbered), for
    checks that name ``file:line``."""
    p = Path(path)
    try:
        f = open_text(p)
    except FileNotFoundError:
        raise SertError(f"{p}: file not found") from None
    with _damaged(p), f:
        try:
            lines = f.readlines()
        except UnicodeDecodeError:
            raise invalid_utf8(p) from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        torn = i == len(lines) and not line.endswith("\n")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if torn and tolerate_torn_tail:
                return
            raise SertError(f"{p}:{i}: malformed JSON line ({e.msg})") from None
        # a complete object without its newline (the writer died before it) is kept: JsonlLog's repair adds it
        if not isinstance(obj, dict):
            raise SertError(f"{p}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield i, obj


def read_jsonl(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> list[dict]:
    return list(iter_jsonl(path, tolerate_torn_tail=tolerate_torn_tail))


class JsonlLog:
    """Append-only JSONL log that survives SIGKILL at any moment.

    On open, a torn last line is cut off (the file is truncated to the end of
    its last complete line), so appends continue from a clean state. Each
    append is one ``write`` of a full line followed by flush + fsync.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        ensure_dir(self.path.parent)
        self._repair()
        self._f = open(self.path, "a", encoding="utf-8")

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data:
            return
        keep = len(data)
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1  # 0 when the only line is torn
        else:
            return
        with open(self.path, "r+b") as f:
            f.truncate(keep)

    def records(self) -> list[dict]:
        return read_jsonl(self.path) if self.path.exists() else []

    def append(self, record: dict) -> None:
        self.append_many([record])

    def append_many(self, records: Iterable[dict]) -> None:
        """Append the records' lines, all or none: a failed write (a full disk) cuts the file back
        to where it was, so the log never keeps part of one append (a resume redoes it whole)."""
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        start = os.fstat(self._f.fileno()).st_size  # every append is flushed: nothing is buffered here
        try:
            self._f.write(text)
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            self._rollback(start)
            raise _named(e, self.path) from e

    def _rollback(self, size: int) -> None:
        """After a failed append: drop what part of it reached the file (and the unwritten rest)."""
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(OSError):
            os.truncate(self.path, size)
        self._f = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the buffer could not be flushed (a full disk): the appends were all-or-none
            pass

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunLock:
    """An exclusive lock on a run directory (``.sert.lock``, flock-based).

    A second ``sert`` process on the same directory refuses with a clear
    message instead of corrupting it. The OS drops the lock when the holder
    dies, so a SIGKILLed run never leaves a stale lock behind. Taking the lock
    deletes the temp files a killed writer left (:func:`remove_stale_temps`); a
    command that fails before writing anything into a directory the lock created
    removes that directory again (``with RunLock(d):``, or ``__exit__(*sys.exc_info())``).
    """

    def __init__(self, directory: str | os.PathLike):
        # The outermost directory this lock creates: removed again if the command fails
        # before writing anything, so a rejected command leaves no trace.
        d = Path(directory).absolute()
        self._created = next((a for a in [*reversed(d.parents), d] if not a.exists()), None)
        self.dir = ensure_dir(directory)
        self.path = self.dir / ".sert.lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self._remove_created()
            raise environment_error(_named(e, self.path), self.dir) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SertError(
                f"{self.dir} is in use by another sert process (pid {other}); "
                "wait for it to finish or use another --out"
            ) from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            remove_stale_temps(self.dir)
        except OSError as e:  # a full disk: not even the pid fits
            self._remove_created()
            os.close(fd)
            self._fd = None
            raise environment_error(_named(e, self.path), self.dir) from e
        return self

    def __exit__(self, exc_type=None, exc=None, tb=None) -> None:
        """Release the lock (removing the directory it made when nothing was written into it); a
        fault of the environment on the way out (a full disk, ...) becomes one :class:`SertError`
        naming this directory (:func:`sert.errors.environment_error`)."""
        if self._fd is None:
            return
        if exc_type is not None:
            self._remove_created()
        os.close(self._fd)
        self._fd = None
        if exc is not None and not isinstance(exc, SertError):
            err = environment_error(exc, self.dir)
            if err is not None:
                raise err from exc

    def _remove_created(self) -> None:
        """Failed before writing anything into a directory it made: remove it (still locked)."""
        if self._created is None:
            return
        with contextlib.suppress(OSError):
            if [p.name for p in self.dir.iterdir()] in ([self.path.name], []):
                self.path.unlink(missing_ok=True)
                d = self.dir.absolute()
                while True:
                    d.rmdir()
                    if d == self._created or d.parent == d:
                        break
                    d = d.parent


def remove_stale_temps(directory: str | os.PathLike) -> None:
    """Delete temp files that :func:`atomic_write_text` leaves when killed mid-write.

    Call only while holding the directory's :class:`RunLock` (no writer can be active).
    """
    for p in Path(directory).glob(f".*.{TEMP_TAG}*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
