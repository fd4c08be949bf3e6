"""Fold maps: made once per (data, folds, seed, grouping), saved with a content hash, reused by every
variant, trial and blend. Torch-free.

Rule for rare labels: examples are dealt to folds label by label, round-robin, after a seeded shuffle,
continuing the round-robin across labels so fold sizes stay balanced. A label with fewer examples
than folds therefore sits in as many folds as it has examples (one each); the other folds have none
of it in their validation part, and a label with a single example is never in the training part of
its own fold. Such labels are reported with a warning, never an error.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kfold.core.errors import StoreError
from kfold.core.textio import read_json, write_json_atomic
from kfold.data import Dataset

FOLDMAP_VERSION = 1


@dataclass(frozen=True)
class FoldMap:
    """id -> fold for one dataset; ``hash`` identifies the assignment (ids, folds and k)."""

    ids: tuple[str, ...]
    folds: np.ndarray
    k: int
    seed: int
    group: str
    data_hash: str
    hash: str
    path: str = ""

    def valid_index(self, fold: int) -> np.ndarray:
        """Row positions (in data order) of the fold's validation part."""
        return np.flatnonzero(self.folds == fold)

    def train_index(self, fold: int) -> np.ndarray:
        """Row positions of the fold's training part."""
        return np.flatnonzero(self.folds != fold)


def _content_hash(ids, folds, k: int) -> str:
    h = hashlib.sha256(f"k={k}\n".encode())
    for i, f in zip(ids, folds):
        h.update(f"{i}\t{int(f)}\n".encode("utf-8"))
    return h.hexdigest()


def make_fold_map(dataset: Dataset, k: int, seed: int, group: str = "none") -> tuple[FoldMap, list[str]]:
    """Stratified, shuffled assignment of rows to ``k`` folds; returns (fold map, warnings).

    ``group="duplicates"`` keeps identical sentences in one fold (assigned by the group's most common label).

    Example
    -------
    >>> fm, warnings = make_fold_map(ds, 5, seed=42)  # doctest: +SKIP
    >>> np.bincount(fm.folds)  # doctest: +SKIP
    array([650, 650, 649, 649, 649])
    """
    labels = [ex.label for ex in dataset.examples]
    if group == "duplicates":
        members: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(dataset.examples):
            members[" ".join(ex.sentence.split())].append(i)
        units = list(members.values())
    else:
        units = [[i] for i in range(len(labels))]
    by_label: dict[str, list[int]] = defaultdict(list)
    for u, rows in enumerate(units):
        counts = Counter(labels[i] for i in rows)
        by_label[sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0]].append(u)
    rng = np.random.default_rng(seed)
    folds = np.full(len(labels), -1, dtype=np.int64)
    turn = 0
    warnings = []
    for label in sorted(by_label, key=str):
        order = [by_label[label][j] for j in rng.permutation(len(by_label[label]))]
        for u in order:
            folds[units[u]] = turn % k
            turn += 1
        n = sum(len(units[u]) for u in order)
        if len(order) < k:
            warnings.append(f"label '{label}' has {n} example(s) in {len(order)} unit(s) for {k} folds: "
                            f"{k - len(order)} fold(s) have none of it in their validation part")
    ids = tuple(ex.id for ex in dataset.examples)
    fm = FoldMap(ids, folds, k, seed, group, dataset.content_hash(), _content_hash(ids, folds, k))
    return fm, warnings


def fold_map_path(workdir: str | Path, dataset: Dataset, k: int, seed: int, group: str) -> Path:
    """Where the fold map of (data, k, seed, group) lives: a descriptive name plus the data hash."""
    stem = Path(dataset.path).stem or "data"
    suffix = "-dup" if group == "duplicates" else ""
    return Path(workdir) / "folds" / f"{stem}-k{k}-seed{seed}{suffix}-{dataset.content_hash()[:10]}.json"


def save_fold_map(fm: FoldMap, path: str | Path) -> FoldMap:
    """Write atomically; returns the map with its path set."""
    write_json_atomic(path, {
        "version": FOLDMAP_VERSION, "k": fm.k, "seed": fm.seed, "group": fm.group, "data_hash": fm.data_hash,
        "hash": fm.hash, "n": len(fm.ids), "ids": list(fm.ids), "folds": fm.folds.tolist(),
    })
    return FoldMap(fm.ids, fm.folds, fm.k, fm.seed, fm.group, fm.data_hash, fm.hash, str(path))


def load_fold_map(path: str | Path) -> FoldMap:
    """Read and verify a fold map (fields, fold range, content hash); StoreError names what is wrong."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise StoreError(f"{path}: found a {type(raw).__name__}, expected a fold map object")
    for key in ("k", "seed", "hash", "ids", "folds", "data_hash"):
        if key not in raw:
            raise StoreError(f"{path}: field '{key}': missing, expected a fold map written by kfold")
    ids, folds, k = raw["ids"], raw["folds"], raw["k"]
    if not isinstance(k, int) or k < 2:
        raise StoreError(f"{path}: field 'k': found {k!r}, expected an integer >= 2")
    if not isinstance(ids, list) or not isinstance(folds, list) or len(ids) != len(folds):
        raise StoreError(f"{path}: fields 'ids'/'folds': found lists of {len(ids)} and {len(folds)}, expected equal lengths")
    for row, f in enumerate(folds, start=1):
        if not isinstance(f, int) or not 0 <= f < k:
            raise StoreError(f"{path}: row {row}, field 'folds': found {f!r}, expected an integer 0..{k - 1}")
    if len(set(ids)) != len(ids):
        raise StoreError(f"{path}: field 'ids': found duplicate ids, expected each id once")
    folds_arr = np.asarray(folds, dtype=np.int64)
    digest = _content_hash(ids, folds_arr, k)
    if digest != raw["hash"]:
        raise StoreError(f"{path}: field 'hash': found {raw['hash'][:12]}, expected {digest[:12]} from its content "
                         "(the fold map was edited or is corrupt)")
    return FoldMap(tuple(str(i) for i in ids), folds_arr, k, raw["seed"], raw.get("group", "none"), raw["data_hash"], digest, str(path))


def fold_map_for(workdir: str | Path, dataset: Dataset, k: int, seed: int, group: str = "none",
                 log=print) -> FoldMap:
    """Load the fold map of (data, k, seed, group) from ``workdir/folds``, making and saving it once."""
    path = fold_map_path(workdir, dataset, k, seed, group)
    if path.exists():
        fm = load_fold_map(path)
        if fm.data_hash != dataset.content_hash() or fm.ids != tuple(ex.id for ex in dataset.examples):
            raise StoreError(f"{path}: field 'data_hash': the fold map belongs to other data than {dataset.path}")
        return fm
    fm, warnings = make_fold_map(dataset, k, seed, group)
    for w in warnings:
        log(f"warning: {w}")
    return save_fold_map(fm, path)
