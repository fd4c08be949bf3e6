"""Loading a config's training and test data (or the generated demo data). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ._config import Config
from ._demo import write_demo_data
from ._errors import data_error
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


def load_data(cfg: Config, workdir: str | Path, log: Callable[[str], None] = print) -> LoadedData:
    """Read ``cfg.data`` (demo data when empty) and ``cfg.test``; validate them together.

    A labelled test file may only use labels that occur in the training data.
    """
    data_path, test_path = (Path(cfg.data), Path(cfg.test) if cfg.test else None)
    if not cfg.data:
        data_path, demo_test = demo_paths(workdir)
        test_path = test_path or demo_test
    train = read_dataset(data_path, cfg.labels or None, format=cfg.format, role="train",
                         columns=cfg.columns or None, repair_offsets=cfg.repair_offsets)
    for note in train.notes:
        log(note)
    test = None
    if test_path is not None:
        test = read_dataset(test_path, train.label_names, format=cfg.format, role="test",
                            columns=cfg.columns or None, repair_offsets=cfg.repair_offsets)
        for note in test.notes:
            log(note)
        if test.labelled:
            seen = set(np.unique(train.y))
            for ex in test.examples:
                if train.label_names.index(ex.label) not in seen:
                    raise data_error(test.path, ex.row, "label", ex.label, "a label that occurs in the training data")
    log(dataset_summary(train))
    if test is not None:
        log(dataset_summary(test))
    return LoadedData(train, test)
