"""Loading a config's training and test data (or the generated demo data). Torch-free."""

from __future__ import annotations

import csv
import io
from collections import Counter
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
from ._validate import list_name, skip_hint

#: Where the generated demo data goes inside a workdir.
DEMO_FOLDER = "demo-data"


@dataclass
class LoadedData:
    """The training set and the optional test set (read with the training set's label names)."""

    train: Dataset
    test: Dataset | None
    #: the lines said about the files (repairs, lists written, each file's summary), in the order said
    lines: tuple[str, ...] = ()


def demo_paths(workdir: str | Path) -> tuple[Path, Path]:
    """(train, test) of the demo data in ``workdir``, generating it on first use."""
    folder = Path(workdir) / DEMO_FOLDER
    if not (folder / "train.tsv").exists():
        write_demo_data(folder)
    return folder / "train.tsv", folder / "test.tsv"


#: The lists written beside a dataset's data (``<workdir>/data/<kind>-<file>-<hash>.csv``): their columns.
LIST_COLUMNS = {
    "repairs": ["file", "row", "id", "field", "text", "old_start", "old_end", "new_start", "new_end", "moved"],
    "overlaps": ["file", "row", "id", "kind", "subject_start", "subject_end", "object_start", "object_end",
                 "subject", "object"],
    "skipped": ["file", "row", "id", "field", "kind", "problem"],
}


def list_path(ds: Dataset, workdir: str | Path, kind: str) -> Path:
    """Where one of a dataset's lists goes: ``<workdir>/data/<kind>-<file>-<hash>.csv`` (kinds: LIST_COLUMNS)."""
    return Path(workdir) / "data" / list_name(ds, kind)


def _list_rows(ds: Dataset, kind: str) -> list[list]:
    """The rows of one list: offset repairs (in the file's own end convention, characters moved), overlapping
    spans (exclusive ends, with their texts) or rows left out by ``--bad-rows skip``."""
    if kind == "repairs":
        return [[ds.path, r.row, r.id, r.field, r.text, *r.old, *r.new, r.new[0] - r.old[0]] for r in ds.repairs]
    if kind == "overlaps":
        text = {ex.row: ex.sentence for ex in ds.examples}
        return [[ds.path, o.row, o.id, o.kind, *o.subject, *o.object, text[o.row][slice(*o.subject)],
                 text[o.row][slice(*o.object)]] for o in ds.overlaps]
    return [[ds.path, s.row, s.id, s.field, s.kind, s.problem] for s in ds.skipped]


def write_lists(ds: Dataset, workdir: str | Path) -> dict[str, Path]:
    """Write the dataset's non-empty lists (repairs, overlaps, skipped rows) under ``<workdir>/data/``; returns
    kind -> path."""
    out = {}
    for kind, columns in LIST_COLUMNS.items():
        rows = _list_rows(ds, kind)
        if rows:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerows([columns] + rows)
            out[kind] = write_text_atomic(list_path(ds, workdir, kind), buf.getvalue())
    return out


def data_notes(ds: Dataset, lists: dict[str, Path]) -> list[str]:
    """One line per list a file has: offsets repaired, overlapping spans marked, rows left out."""
    name, out = Path(ds.path).name, []
    where = {kind: f"; list in {path}" for kind, path in lists.items()}
    if ds.repairs:
        moved = sorted({abs(r.new[0] - r.old[0]) for r in ds.repairs})
        span = f"{moved[0]}" if len(moved) == 1 else f"{moved[0]}-{moved[-1]}"
        n = len(ds.repairs)
        out.append(f"warning: repaired {n} entity span{'s' if n != 1 else ''} in {name}, moved {span} "
                   f"character{'s' if moved[-1] != 1 else ''}" + where.get("repairs", ""))
    if ds.overlaps:
        kinds = Counter(o.kind for o in ds.overlaps)
        n = len(ds.overlaps)
        out.append(f"note: {n} row{'s' if n != 1 else ''} of {name} {'have' if n != 1 else 'has'} overlapping subject "
                   f"and object spans ({', '.join(f'{c} {k}' for k, c in kinds.most_common())}); markers go at both "
                   "spans' positions (--overlap)" + where.get("overlaps", ""))
    if ds.skipped:
        n = len({s.row for s in ds.skipped})
        out.append(f"warning: left out {n} training row{'s' if n != 1 else ''} of {name} that cannot be repaired "
                   "(--bad-rows skip)" + where.get("skipped", ""))
    return out


def read_settings(cfg: Config) -> dict:
    """The keyword arguments of ``read_dataset`` that a config sets (format, columns, offset repair, overlapping
    spans and the marker that shows them, bad rows)."""
    return {"format": cfg.format, "columns": cfg.columns or None, "offsets": cfg.offsets,
            "repair_window": cfg.repair_window, "overlap": cfg.overlap, "marker": cfg.marker, "bad_rows": cfg.bad_rows}


def with_skip_hint(exc: DataProblems, workdir: str | Path) -> DataProblems:
    """The refusal of a training file, its last line naming the list ``--bad-rows skip`` would write in this
    workdir."""
    if exc.skippable:
        exc.hint = skip_hint(exc, Path(workdir) / "data")
    return exc


def load_data(cfg: Config, workdir: str | Path, log: Callable[[str], None] = print) -> LoadedData:
    """Read ``cfg.data`` (demo data when empty) and ``cfg.test``; validate them together.

    Every problem of both files is reported at once (DataProblems). A labelled test file may only use
    labels that occur in the training data. Offset repairs, overlapping spans and rows left out by
    ``--bad-rows skip`` are listed in ``<workdir>/data/`` with one line per file and list.
    """
    data_path, test_path = (Path(cfg.data), Path(cfg.test) if cfg.test else None)
    if not cfg.data:
        data_path, demo_test = demo_paths(workdir)
        test_path = test_path or demo_test
    found: list = []
    train = test = refused = None
    try:
        train = read_dataset(data_path, cfg.labels or None, role="train", **read_settings(cfg))
    except DataProblems as exc:
        found += exc.problems
        refused = with_skip_hint(exc, workdir)
    if test_path is not None:
        try:
            # without the training labels (its own problems stopped it), the test file is read with its own
            test = read_dataset(test_path, train.label_names if train else (cfg.labels or None), role="test",
                                **read_settings(cfg))
        except DataProblems as exc:
            found += exc.problems
    if found:
        both = DataProblems(found, refused.hint if refused is not None else "")
        both.skippable, both.skip_list = (refused.skippable, refused.skip_list) if refused is not None else ([], "")
        raise both
    assert train is not None
    if test is not None and test.labelled:
        seen = set(np.unique(train.y))
        problems = ProblemList(test.path)
        for ex in test.examples:
            if train.label_names.index(ex.label) not in seen:
                problems.add(ex.row, "label", ex.label, "a label that occurs in the training data", "label not in training data")
        problems.raise_if_any()
    lines = [note for ds in (train, test) if ds is not None for note in data_notes(ds, write_lists(ds, workdir))]
    lines += [dataset_summary(ds) for ds in (train, test) if ds is not None]
    for line in lines:
        log(line)
    return LoadedData(train, test, tuple(lines))
