"""Reading text files strictly (UTF-8, BOM tolerated), writing files atomically, and file locks. Torch-free."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DataError, StoreError


def read_text(path: str | Path, *, allow_empty: bool = False) -> str:
    """Read a UTF-8 text file; a BOM is dropped, CRLF is left to the parsers.

    Raises DataError naming the file and line for a missing file, an empty file or bytes that
    are not UTF-8 (a file saved as CP949, Latin-1 or Windows-1252).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not allow_empty and not raw.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 2].hex(" ")
        raise DataError(
            f"{path}: row {line}: found bytes {bad} that are not UTF-8, expected a UTF-8 file "
            "(re-save it as UTF-8, e.g. iconv -f cp949 -t utf-8)"
        ) from None


def split_lines(text: str) -> list[str]:
    """Split on '\\n' only (str.splitlines would also split on U+2028 inside sentences), drop '\\r'."""
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it over ``path`` on success.

    A crash or exception leaves the previous file (if any) untouched and removes the temporary.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive OS file lock (``flock``) on ``path`` (created if missing) for the block.

    Yields True once the lock is held; with ``wait=False`` yields False at once when another process holds it.
    The kernel releases the lock when its process dies, even by SIGKILL, so a killed process never leaves a
    stale lock behind. The holder's process id is written into the file (for a person looking at it).

    Raises StoreError when the lock file cannot be created.

    Example::

        with file_lock(cache / ".me5-small.lock"):
            build_once()
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
    except OSError as exc:
        raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON (UTF-8, indented, non-ASCII kept) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path, error: type = StoreError) -> Any:
    """Read a JSON file; a missing, unreadable or invalid file raises ``error`` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: row {exc.lineno}: found invalid JSON ({exc.msg}), expected a JSON document") from None
