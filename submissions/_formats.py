"""Leaderboard file formats: writers and a checker. Torch-free.

============  ===============================================================================
format        file
============  ===============================================================================
pstage2       the source competition's: one column ``pred`` (integer label index), one row per
              test row in test-file order
klue          ``id,pred_label,probs``: label name and the list of probabilities in label-id order
semeval       the official answer file: ``id<TAB>label``, ids from 8001 in test order, no header
generic       ``id,label`` and one probability column per label (named after the label)
============  ===============================================================================
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from kfold.core.errors import DataError, StoreError, data_error, unknown_name
from kfold.core.textio import read_text, split_lines, write_text_atomic

FORMATS = ("pstage2", "klue", "semeval", "generic")
SEMEVAL_FIRST_ID = 8001
#: Tolerance for "probabilities sum to 1" in files (they are written with 6 decimals).
SUM_TOLERANCE = 1e-3


def _fmt(p: float) -> str:
    return f"{p:.6f}"


def render_submission(fmt: str, ids: Sequence[str], label_names: Sequence[str], probs: np.ndarray) -> str:
    """The file's text for ``probs`` [n, C] (rows in test-file order)."""
    if fmt not in FORMATS:
        raise unknown_name("submission format", fmt, FORMATS)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(ids), len(label_names)):
        raise StoreError(f"probabilities of shape {probs.shape}, expected ({len(ids)}, {len(label_names)})")
    pred = probs.argmax(1)
    buf = io.StringIO()
    if fmt == "semeval":
        for i, p in enumerate(pred):
            buf.write(f"{SEMEVAL_FIRST_ID + i}\t{label_names[p]}\n")
        return buf.getvalue()
    writer = csv.writer(buf, lineterminator="\n")
    if fmt == "pstage2":
        writer.writerow(["pred"])
        writer.writerows([[int(p)] for p in pred])
    elif fmt == "klue":
        writer.writerow(["id", "pred_label", "probs"])
        for rid, p, row in zip(ids, pred, probs):
            writer.writerow([rid, label_names[p], "[" + ", ".join(_fmt(x) for x in row) + "]"])
    else:
        writer.writerow(["id", "label"] + list(label_names))
        for rid, p, row in zip(ids, pred, probs):
            writer.writerow([rid, label_names[p]] + [_fmt(x) for x in row])
    return buf.getvalue()


def write_submission(path: str | Path, fmt: str, ids: Sequence[str], label_names: Sequence[str], probs: np.ndarray,
                     force: bool = False) -> Path:
    """Write a leaderboard file atomically; an existing file is kept unless ``force``.

    The written file is read back through :func:`check_submission` before it replaces anything.

    Raises
    ------
    StoreError when the file exists (without ``force``) or cannot be written.

    Example
    -------
    >>> write_submission("submission.csv", "pstage2", ids, names, probs)  # doctest: +SKIP
    """
    path = Path(path)
    if path.exists() and not force:
        raise StoreError(f"{path}: exists; pass --force to overwrite it (the previous file is kept until then)")
    text = render_submission(fmt, ids, label_names, probs)
    check_text(text, str(path), fmt, ids, label_names)
    return write_text_atomic(path, text)


def check_submission(path: str | Path, fmt: str, ids: Sequence[str], label_names: Sequence[str]) -> int:
    """Validate a leaderboard file against its format and the test file's ids; returns the row count.

    Checks: header, row count, id order, valid labels, probabilities in [0, 1] summing to 1 and
    agreeing with the predicted label. Raises DataError naming the file, row and field.
    """
    return check_text(read_text(path), str(path), fmt, ids, label_names)


def check_text(text: str, path: str, fmt: str, ids: Sequence[str], label_names: Sequence[str]) -> int:
    """:func:`check_submission` on a file's text."""
    if fmt not in FORMATS:
        raise unknown_name("submission format", fmt, FORMATS)
    names = list(label_names)
    if fmt == "semeval":
        lines = [line for line in split_lines(text)]
        _count(path, len(lines), len(ids), first_row=1)
        for row, line in enumerate(lines, start=1):
            parts = line.split("\t")
            if len(parts) != 2:
                raise data_error(path, row, None, line, "id<TAB>label")
            if parts[0].strip() != str(SEMEVAL_FIRST_ID + row - 1):
                raise data_error(path, row, "id", parts[0], f"{SEMEVAL_FIRST_ID + row - 1} (ids from {SEMEVAL_FIRST_ID} in test order)")
            if parts[1].strip() not in names:
                raise data_error(path, row, "label", parts[1], "one of the label names")
        return len(lines)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = [r for r in reader if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header, body = rows[0], rows[1:]
    expected = {"pstage2": ["pred"], "klue": ["id", "pred_label", "probs"], "generic": ["id", "label"] + names}[fmt]
    if [h.strip() for h in header] != expected:
        raise data_error(path, 1, "header", ",".join(header), ",".join(expected))
    _count(path, len(body), len(ids), first_row=2)
    for n, rec in enumerate(body):
        row = n + 2
        if len(rec) != len(expected):
            raise data_error(path, row, None, f"<{len(rec)} columns>", f"{len(expected)} columns")
        if fmt == "pstage2":
            value = rec[0].strip()
            if not value.lstrip("-").isdigit() or not 0 <= int(value) < len(names):
                raise data_error(path, row, "pred", value, f"an integer label index 0..{len(names) - 1}")
            continue
        if rec[0] != ids[n]:
            raise data_error(path, row, "id", rec[0], f"'{ids[n]}' (the test file's id at this position)")
        label = rec[1]
        if label not in names:
            raise data_error(path, row, "label" if fmt == "generic" else "pred_label", label, "one of the label names")
        if fmt == "klue":
            try:
                probs = json.loads(rec[2])
            except json.JSONDecodeError:
                raise data_error(path, row, "probs", rec[2], "a list of numbers like [0.1, 0.9]") from None
            field = "probs"
        else:
            probs = rec[2:]
            field = "probability columns"
        _check_probs(path, row, field, probs, names, label)
    return len(body)


def _count(path: str, found: int, expected: int, first_row: int) -> None:
    if found != expected:
        raise data_error(path, first_row + min(found, expected), None, f"<{found} data rows>",
                         f"{expected} rows, one per test row")


def _check_probs(path: str, row: int, field: str, probs, names: list[str], label: str) -> None:
    if not isinstance(probs, list) or len(probs) != len(names):
        raise data_error(path, row, field, f"<{len(probs) if isinstance(probs, list) else probs} values>",
                         f"{len(names)} probabilities in label-id order")
    try:
        values = [float(p) for p in probs]
    except (TypeError, ValueError):
        raise data_error(path, row, field, probs, "numbers") from None
    if any(not math.isfinite(v) or v < 0 or v > 1 for v in values):
        raise data_error(path, row, field, values, "probabilities between 0 and 1")
    if abs(sum(values) - 1.0) > SUM_TOLERANCE:
        raise data_error(path, row, field, f"<sum {sum(values):.6f}>", "probabilities that sum to 1")
    if max(values) > values[names.index(label)] + SUM_TOLERANCE:
        raise data_error(path, row, "label", label, f"the most probable label '{names[int(np.argmax(values))]}'")


def test_ids_of(test_file: str | Path, labels, fmt: str = "auto") -> list[str]:
    """Ids of a test file in file order (SemEval files: 8001...)."""
    from kfold.data import read_dataset

    ds = read_dataset(test_file, labels, format=fmt, role="test", id_start=SEMEVAL_FIRST_ID)
    return [ex.id for ex in ds.examples]


def predicted_labels(path: str | Path, fmt: str, label_names: Sequence[str]) -> list[str]:
    """The label predicted on each row of a (checked) leaderboard file, in file order."""
    text = read_text(path)
    if fmt == "semeval":
        return [line.split("\t")[1].strip() for line in split_lines(text) if line.strip()]
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r][1:]
    if fmt == "pstage2":
        return [label_names[int(r[0])] for r in rows]
    return [r[1] for r in rows]
