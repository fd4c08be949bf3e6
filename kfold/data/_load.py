"""Loading a config's training and test data (or the generated demo data). Torch-free."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kfold.core.config import Config
from kfold.core.errors import DataProblems, ProblemList
from kfold.core.textio import write_text_atomic

from ._demo import write_demo_data
from ._readers import dataset_summary, read_dataset
from ._schema import Dataset

#: Where the generated demo data goes inside a workdir.
DEMO_FOLDER = "demo-data"


@dataclass
class LoadedData:
    """The training set and the optional test set (read with the training set's label names)."""

    train: Dataset
    test: Dataset | None


def demo_paths(workdir: str | Path) -> tuple[Path, Path]:
    """(train, test) of the demo data in ``workdir``, generating it on first use."""
    folder = Path(workdir) / DEMO_FOLDER
    if not (folder / "train.tsv").exists():
        write_demo_data(folder)
    return folder / "train.tsv", folder / "test.tsv"


def write_repairs(ds: Dataset, workdir: str | Path) -> Path | None:
    """Write the dataset's offset repairs as ``<workdir>/data/repairs-<file>-<hash>.csv`` (file, row, id, field,
    text, old and new offsets in the file's own convention, characters moved); None when there were none."""
    if not ds.repairs:
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "row", "id", "field", "text", "old_start", "old_end", "new_start", "new_end", "moved"])
    for r in ds.repairs:
        writer.writerow([ds.path, r.row, r.id, r.field, r.text, *r.old, *r.new, r.new[0] - r.old[0]])
    return write_text_atomic(repairs_path(ds, workdir), buf.getvalue())


def repairs_path(ds: Dataset, workdir: str | Path) -> Path:
    """Where the repairs of a dataset are listed: ``<workdir>/data/repairs-<file>-<hash>.csv``."""
    return Path(workdir) / "data" / f"repairs-{Path(ds.path).stem or 'data'}-{ds.content_hash()[:10]}.csv"


def repair_note(ds: Dataset, listed: Path | None) -> str | None:
    """The one warning line for a file whose offsets were repaired (None when none were)."""
    if not ds.repairs:
        return None
    moved = sorted({abs(r.new[0] - r.old[0]) for r in ds.repairs})
    span = f"{moved[0]}" if len(moved) == 1 else f"{moved[0]}-{moved[-1]}"
    n = len(ds.repairs)
    return (f"warning: repaired {n} entity span{'s' if n != 1 else ''} in {Path(ds.path).name}, moved {span} "
            f"character{'s' if moved[-1] != 1 else ''}" + (f"; list in {listed}" if listed else ""))


def read_settings(cfg: Config) -> dict:
    """The keyword arguments of ``read_dataset`` that a config sets (format, columns, offset repair)."""
    return {"format": cfg.format, "columns": cfg.columns or None, "offsets": cfg.offsets,
            "repair_window": cfg.repair_window}


def load_data(cfg: Config, workdir: str | Path, log: Callable[[str], None] = print) -> LoadedData:
    """Read ``cfg.data`` (demo data when empty) and ``cfg.test``; validate them together.

    Every problem of both files is reported at once (DataProblems). A labelled test file may only use
    labels that occur in the training data. Offset repairs are listed in ``<workdir>/data/`` with one
    warning line per file.
    """
    data_path, test_path = (Path(cfg.data), Path(cfg.test) if cfg.test else None)
    if not cfg.data:
        data_path, demo_test = demo_paths(workdir)
        test_path = test_path or demo_test
    found: list = []
    train = test = None
    try:
        train = read_dataset(data_path, cfg.labels or None, role="train", **read_settings(cfg))
    except DataProblems as exc:
        found += exc.problems
    if test_path is not None:
        try:
            # without the training labels (its own problems stopped it), the test file is read with its own
            test = read_dataset(test_path, train.label_names if train else (cfg.labels or None), role="test",
                                **read_settings(cfg))
        except DataProblems as exc:
            found += exc.problems
    if found:
        raise DataProblems(found)
    assert train is not None
    if test is not None and test.labelled:
        seen = set(np.unique(train.y))
        problems = ProblemList(test.path)
        for ex in test.examples:
            if train.label_names.index(ex.label) not in seen:
                problems.add(ex.row, "label", ex.label, "a label that occurs in the training data", "label not in training data")
        problems.raise_if_any()
    for ds in (train, test):
        note = repair_note(ds, write_repairs(ds, workdir)) if ds is not None else None
        if note:
            log(note)
    log(dataset_summary(train))
    if test is not None:
        log(dataset_summary(test))
    return LoadedData(train, test)
