"""Artifacts on disk: atomic writes, append-only JSONL logs, run-directory locks.

Every artifact is either written atomically (temp file in the same directory,
fsync, rename) or is an append-only JSONL log whose torn last line (a process
killed mid-write) is detected and dropped on the next read.

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

from .errors import SertError


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
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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
    finally:
        plt.close(fig)
    os.replace(tmp, path)
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


def iter_jsonl(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> Iterator[dict]:
    """Yield the objects of a JSONL file.

    A malformed line is an error naming file and line, except a final line with
    no newline when ``tolerate_torn_tail`` is set: that is a write cut short by a
    kill, and it is dropped (the caller redoes that record).
    """
    p = Path(path)
    try:
        f = open_text(p)
    except FileNotFoundError:
        raise SertError(f"{p}: file not found") from None
    with _damaged(p), f:
        lines = f.readlines()
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
        if torn and tolerate_torn_tail:
            # Complete JSON but no newline: the writer may have died before the
            # newline; keep it, the repair in JsonlLog adds the newline.
            pass
        if not isinstance(obj, dict):
            raise SertError(f"{p}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield obj


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
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        self._f.write(text)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

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

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SertError(
                f"{self.dir} is in use by another sert process (pid {other}); "
                "wait for it to finish or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        remove_stale_temps(self.dir)
        return self

    def __exit__(self, exc_type=None, *exc) -> None:
        if self._fd is None:
            return
        if exc_type is not None and self._created is not None:
            # Failed before writing anything into a directory it made: remove it (still locked).
            with contextlib.suppress(OSError):
                if [p.name for p in self.dir.iterdir()] == [self.path.name]:
                    self.path.unlink()
                    d = self.dir.absolute()
                    while True:
                        d.rmdir()
                        if d == self._created or d.parent == d:
                            break
                        d = d.parent
        os.close(self._fd)
        self._fd = None


def remove_stale_temps(directory: str | os.PathLike) -> None:
    """Delete temp files that :func:`atomic_write_text` leaves when killed mid-write.

    Call only while holding the directory's :class:`RunLock` (no writer can be active).
    """
    for p in Path(directory).glob(f".*.{TEMP_TAG}*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
