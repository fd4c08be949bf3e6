"""Backbone folders the toolkit builds from installed packages (``me5-small``): built once per machine into a cache
folder under a file lock, atomically (written in a temporary folder beside it, then renamed), with a record of
the source packages, their versions and file hashes and the built folder's content hash. Later uses only check
that the folder is complete and its record matches the installed sources; a partial or corrupt folder is rebuilt.

The cache lives in ``$REKFOLD_CACHE/backbones`` (default ``~/.cache/rekfold/backbones``), one folder per backbone
and source versions: ``me5-small-<12 hex>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kfold.core.errors import StoreError
from kfold.core.store import file_sha256
from kfold.core.textio import file_lock, read_json, write_json_atomic

#: Environment variable naming the toolkit's cache folder (default ``~/.cache/rekfold``).
CACHE_ENV = "REKFOLD_CACHE"
#: The build record inside a built folder; written last, so a folder without it is partial.
RECORD = BUILD_RECORD = "rekfold-build.json"


@dataclass(frozen=True)
class Source:
    """One installed source file of a built backbone: its distribution, version and path."""

    package: str
    version: str
    path: Path

    def identity(self) -> dict:
        """What a later use compares with the record without reading the file: package, version, name, size."""
        return {"package": self.package, "version": self.version, "file": self.path.name,
                "size": self.path.stat().st_size}


def cache_root() -> Path:
    """The folder built backbones go to: ``$REKFOLD_CACHE/backbones`` or ``~/.cache/rekfold/backbones``."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rekfold"
    return Path(base).expanduser() / "backbones"


def built_folder(name: str, sources: list[Source], fmt: int) -> Path:
    """The cache folder of ``name`` built by converter format ``fmt`` from these sources (not built here)."""
    key = json.dumps({"format": fmt, "sources": [s.identity() for s in sources]}, sort_keys=True)
    return cache_root() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_built(name: str, sources: list[Source], convert: Callable[[Path, list[Source]], None], fmt: int) -> Path:
    """The complete built folder of ``name``; builds it first (under a lock, atomically) when missing or broken.

    ``convert(folder, sources)`` writes the backbone's files into an empty folder. A second process that
    waited on the lock finds the folder complete and returns it without building.

    Raises StoreError when the cache folder cannot be written; the converter's own errors pass through.

    Example::

        path = ensure_built("me5-small", me5_sources(), convert, FORMAT)
    """
    folder = built_folder(name, sources, fmt)
    if _complete(folder, name, sources, fmt):
        return folder
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if not _complete(folder, name, sources, fmt):
            _build(folder, name, sources, convert, fmt)
    return folder


def build_hash(folder: str | Path) -> str | None:
    """The content hash a built folder's record holds (sha256 over its files' names and hashes); None for a
    folder the toolkit did not build (a packaged or downloaded checkpoint), one without a readable record, or one
    whose files are not the record's (names and sizes: a partial copy)."""
    try:
        record = read_json(Path(folder) / RECORD)
    except StoreError:
        return None
    digest = record.get("content_hash") if isinstance(record, dict) else None
    if not isinstance(digest, str) or not _files_match(Path(folder), record.get("files")):
        return None
    return digest


def _files_match(folder: Path, files) -> bool:
    """Whether ``folder`` holds exactly the files a record lists, with their sizes (a partial or extended copy does
    not carry the record's hash)."""
    try:
        present = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != RECORD}
        return present == {name: entry["size"] for name, entry in files.items()}
    except (OSError, AttributeError, KeyError, TypeError):
        return False


def folder_content(folder: str | Path) -> tuple[dict, str]:
    """A folder's files (name -> size and sha256) and its content hash (sha256 over the names and hashes), as a
    build record keeps them. Only the folder's own files count, not its sub-folders (a sentence-transformers
    checkpoint keeps its pooling settings in ``1_Pooling/``, which no Auto class reads)."""
    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(Path(folder).iterdir())
             if p.is_file()}
    return files, hashlib.sha256("".join(f"{f}\t{v['sha256']}\n" for f, v in files.items()).encode()).hexdigest()


def _complete(folder: Path, name: str, sources: list[Source], fmt: int) -> bool:
    """Whether the record is there, matches the installed sources and lists exactly the folder's files and sizes."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        files = record["files"]
        recorded = [{k: src[k] for k in ("package", "version", "file", "size")} for src in record["sources"]]
        if (record.get("backbone") != name or record.get("format") != fmt
                or not isinstance(record.get("content_hash"), str) or recorded != [s.identity() for s in sources]):
            return False
        present = {p.name for p in folder.iterdir()} - {RECORD}
        return present == set(files) and all((folder / f).stat().st_size == files[f]["size"] for f in files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _build(folder: Path, name: str, sources: list[Source], convert, fmt: int) -> None:
    """Convert into a temporary folder beside ``folder``, record it, then swap it in (the caller holds the lock)."""
    root = folder.parent
    for stale in root.glob(f".{folder.name}.*.tmp"):  # left by a killed build: nobody else holds the lock
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=root))
    except OSError as exc:
        raise StoreError(f"{root}: cannot write: {exc.strerror or exc}") from None
    try:
        convert(tmp, sources)
        for p in (tmp, *tmp.iterdir()):  # mkdtemp and atomic writes make private files; others may read a cache
            p.chmod(0o755 if p.is_dir() else 0o644)
        files, content = folder_content(tmp)
        write_json_atomic(tmp / RECORD, {
            "backbone": name, "format": fmt,
            "sources": [{**s.identity(), "sha256": file_sha256(s.path)} for s in sources],
            "files": files, "content_hash": content})
        old = root / f".{folder.name}.{os.getpid()}.old.tmp"
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise StoreError(f"{folder}: cannot write: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
