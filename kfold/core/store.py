"""The run store: one prediction schema, atomic writes, completion records and fold locks. Torch-free.

Layout of one run (variant, backbone, seed)::

    <workdir>/runs/<run>/config.json         resolved config, versions, fold map hash, label names
    <workdir>/runs/<run>/fold<k>/valid.npz    the fold's validation logits (ids + float32 logits)
    <workdir>/runs/<run>/fold<k>/test.npz     the fold model's test logits
    <workdir>/runs/<run>/fold<k>/done.json    completion record, written last (metrics, epoch, file hashes)
    <workdir>/runs/<run>/oof.npz              assembled: one row per training id, exactly once
    <workdir>/runs/<run>/test.npz             test logits averaged over folds (+ per fold)
    <workdir>/runs/<run>/summary.json         OOF metrics and per-fold figures
    <workdir>/runs/<run>/refit/test.npz       ``--refit``: the test logits of one model trained on every row
    <workdir>/runs/<run>/refit/done.json      its completion record

Every ``.npz`` is a :class:`Predictions`: ids, label names in order, float32 logits, and, for OOF files,
gold labels and folds, plus the fold map hash. An ensembler needs nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import StoreError
from .textio import file_lock, read_json, write_atomic, write_json_atomic

SCHEMA_VERSION = 1
#: The part of a run trained on every training row after the folds (``kfold run --refit``).
REFIT = "refit"
#: What NumPy raises on a truncated or damaged .npz.
_DAMAGED = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


@dataclass
class Predictions:
    """Logits for a set of ids. ``y`` (-1 = unknown) and ``folds`` are present for OOF predictions.

    ``fold_logits`` ([k, n, C]) keeps each fold model's test logits.
    """

    ids: np.ndarray
    label_names: tuple[str, ...]
    logits: np.ndarray
    fold_map_hash: str = ""
    y: np.ndarray | None = None
    folds: np.ndarray | None = None
    fold_logits: np.ndarray | None = None
    path: str = ""

    def __len__(self) -> int:
        return len(self.ids)


def save_predictions(path: str | Path, pred: Predictions) -> Path:
    """Write a Predictions file atomically (float32 logits, unicode ids, no pickles)."""
    arrays = {
        "schema": np.array(SCHEMA_VERSION), "ids": np.asarray(pred.ids, dtype=str),
        "label_names": np.asarray(pred.label_names, dtype=str), "logits": np.asarray(pred.logits, dtype=np.float32),
        "fold_map_hash": np.array(pred.fold_map_hash),
    }
    for name in ("y", "folds"):
        if getattr(pred, name) is not None:
            arrays[name] = np.asarray(getattr(pred, name), dtype=np.int64)
    if pred.fold_logits is not None:
        arrays["fold_logits"] = np.asarray(pred.fold_logits, dtype=np.float32)

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return write_atomic(path, _write)


def load_predictions(path: str | Path) -> Predictions:
    """Read and validate a Predictions file.

    Raises StoreError naming the file, the field and (for bad values) the row: missing file,
    not an npz, missing fields, shapes that disagree, non-float32 or non-finite logits.
    """
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{path}: file not found") from None
    except _DAMAGED as exc:
        raise StoreError(f"{path}: found an unreadable file ({exc}), expected a prediction .npz written by kfold") from None
    with z:
        try:
            missing = [k for k in ("schema", "ids", "label_names", "logits") if k not in z.files]
            if missing:
                raise StoreError(f"{path}: field '{missing[0]}': missing, expected a prediction file written by kfold")
            if int(z["schema"]) != SCHEMA_VERSION:
                raise StoreError(f"{path}: field 'schema': found {int(z['schema'])}, expected {SCHEMA_VERSION}")
            ids, names, logits = z["ids"], tuple(str(n) for n in z["label_names"]), z["logits"]
            pred = Predictions(ids.astype(str), names, logits,
                               str(z["fold_map_hash"]) if "fold_map_hash" in z.files else "",
                               z["y"] if "y" in z.files else None, z["folds"] if "folds" in z.files else None,
                               z["fold_logits"] if "fold_logits" in z.files else None, str(path))
        except _DAMAGED as exc:
            raise StoreError(f"{path}: found a damaged array ({exc}), expected a prediction file written by kfold") from None
    check_predictions(pred)
    return pred


def check_predictions(pred: Predictions) -> None:
    """Shapes, dtypes, unique ids and finite float32 logits; StoreError otherwise."""
    p = pred.path or "<predictions>"
    n = len(pred.ids)
    if pred.logits.dtype != np.float32:
        raise StoreError(f"{p}: field 'logits': found dtype {pred.logits.dtype}, expected float32")
    if pred.logits.ndim != 2 or pred.logits.shape != (n, len(pred.label_names)):
        raise StoreError(f"{p}: field 'logits': found shape {pred.logits.shape}, expected ({n}, {len(pred.label_names)})")
    bad = np.flatnonzero(~np.isfinite(pred.logits).all(axis=1))
    if len(bad):
        raise StoreError(f"{p}: row {bad[0] + 1} (id {pred.ids[bad[0]]}), field 'logits': found "
                         f"{pred.logits[bad[0]][~np.isfinite(pred.logits[bad[0]])][0]}, expected finite values ({len(bad)} such rows)")
    if len(np.unique(pred.ids)) != n:
        raise StoreError(f"{p}: field 'ids': found duplicates, expected each id once")
    for name in ("y", "folds"):
        arr = getattr(pred, name)
        if arr is not None and arr.shape != (n,):
            raise StoreError(f"{p}: field '{name}': found shape {arr.shape}, expected ({n},)")
    if pred.y is not None and len(pred.y) and (pred.y.max() >= len(pred.label_names) or pred.y.min() < -1):
        raise StoreError(f"{p}: field 'y': found label index {pred.y.max()}, expected -1..{len(pred.label_names) - 1}")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunDir:
    """Paths and records of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self.root.name

    def fold_dir(self, fold: int | str) -> Path:
        """``fold<k>``, or ``refit`` for the model trained on every row (``kfold run --refit``)."""
        return self.root / (REFIT if fold == REFIT else f"fold{fold}")

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def oof_path(self) -> Path:
        return self.root / "oof.npz"

    @property
    def test_path(self) -> Path:
        return self.root / "test.npz"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    @property
    def log_path(self) -> Path:
        """``log.txt``: every line the run's parts and the driver wrote about it, failures with their tracebacks
        (appended; never read back by the toolkit)."""
        return self.root / "log.txt"

    def append_log(self, lines: list[str]) -> None:
        """Append lines to the run's log (an append-only text file, not a record: it marks nothing complete)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write("".join(f"{line}\n" for line in lines))
        except OSError as exc:
            raise StoreError(f"{self.log_path}: cannot write: {exc.strerror}") from None

    def read_config(self) -> dict:
        raw = read_json(self.config_path)
        if not isinstance(raw, dict) or "config" not in raw or "label_names" not in raw:
            raise StoreError(f"{self.config_path}: field 'config': missing, expected a run config written by kfold")
        return raw

    def write_fold(self, fold: int | str, valid: Predictions | None, test: Predictions | None, record: dict) -> None:
        """Write the fold's logits, then its completion record (last, so a crash never looks complete).
        The refit (``fold="refit"``) has no validation rows, only test logits."""
        d = self.fold_dir(fold)
        files = {name: pred for name, pred in (("valid.npz", valid), ("test.npz", test)) if pred is not None}
        hashes = {}
        for name, pred in files.items():
            save_predictions(d / name, pred)
            hashes[name] = file_sha256(d / name)
        write_json_atomic(d / "done.json", {**record, "fold": fold, "files": hashes})

    def fold_record(self, fold: int | str) -> dict | None:
        """The completion record if the fold is complete and its files match their hashes, else None.

        A record whose files are missing or altered raises StoreError (never silently retrained over).
        """
        d = self.fold_dir(fold)
        done = d / "done.json"
        if not done.exists():
            return None
        record = read_json(done)
        if not isinstance(record, dict) or "files" not in record:
            raise StoreError(f"{done}: field 'files': missing, expected a completion record written by kfold")
        for name, digest in record["files"].items():
            f = d / name
            if not f.exists():
                raise StoreError(f"{f}: file not found, but {done} records it (delete {d} to retrain the fold)")
            if file_sha256(f) != digest:
                raise StoreError(f"{f}: content hash differs from {done} (the file was altered or is corrupt; "
                                 f"delete {d} to retrain the fold)")
        return record

    @contextlib.contextmanager
    def fold_lock(self, fold: int | str) -> Iterator[bool]:
        """Try to lock a fold for this process; yields False when another process holds it.

        An OS file lock (``flock``) is released by the kernel when its process dies, even by SIGKILL,
        so a killed run never leaves a stale lock behind.
        """
        d = self.fold_dir(fold)
        with file_lock(d / ".lock", wait=False) as got:
            yield got


def list_runs(workdir: str | Path, pattern: str = "*") -> list[RunDir]:
    """Run folders under ``workdir/runs`` whose name matches a glob pattern (sorted by name)."""
    root = Path(workdir) / "runs"
    if not root.is_dir():
        return []
    return [RunDir(p) for p in sorted(root.glob(pattern)) if p.is_dir() and (p / "config.json").exists()]
