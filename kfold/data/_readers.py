"""Readers for the four input formats, all producing :class:`Dataset`. Torch-free.

Formats (``format=``):
- ``competition``: the source competition's TSV, no header, 9 columns
  ``id, sentence, entity_01, e1_start, e1_end, entity_02, e2_start, e2_end, label``; inclusive ends;
  parsed as CSV (tab-delimited, double-quoted fields), so quoted sentences keep offsets into the unquoted text.
- ``klue``: KLUE RE JSON (a list) or JSONL; ``subject_entity``/``object_entity`` with inclusive ``end_idx``.
- ``semeval``: SemEval-2010 Task 8 ``label<TAB>sentence`` with inline ``<e1>..</e1>`` / ``<e2>..</e2>`` tags.
- ``generic``: CSV/TSV with a header and a column mapping (see :data:`GENERIC_FIELDS`).
"""

from __future__ import annotations

import ast
import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from kfold.core.errors import ConfigError, DataError, DataProblems, ProblemList, data_error, unknown_name
from kfold.core.textio import read_text, split_lines

from ._labels import BLIND, find_label_file, read_label_file
from ._schema import Dataset
from ._validate import (BAD_ROWS_MODES, OFFSET_MODES, RawRow, build_examples, leave_out_bad_rows, list_name,
                        skip_hint)

FORMATS = ("auto", "competition", "klue", "semeval", "generic")
ROLES = ("train", "test", "blind")
#: Generic-format fields and their default column names. ``*_word`` and types are optional.
GENERIC_FIELDS = {
    "id": "id", "sentence": "sentence", "label": "label",
    "subj_start": "subj_start", "subj_end": "subj_end", "subj_type": "subj_type", "subj_word": "subj_word",
    "obj_start": "obj_start", "obj_end": "obj_end", "obj_type": "obj_type", "obj_word": "obj_word",
}
_GENERIC_REQUIRED = ("id", "sentence", "subj_start", "subj_end", "obj_start", "obj_end")
_COMPETITION_COLUMNS = ("id", "sentence", "entity_01", "e1_start", "e1_end", "entity_02", "e2_start", "e2_end", "label")


def read_dataset(
    path: str | Path,
    labels: str | Path | Sequence[str] | None = None,
    *,
    format: str = "auto",
    role: str = "train",
    columns: Mapping[str, str] | str | None = None,
    offsets: str = "repair",
    repair_window: int = 5,
    overlap: str = "markers",
    marker: str | None = None,
    bad_rows: str = "error",
    id_start: int = 1,
) -> Dataset:
    """Read a relation-extraction file into the common schema, validating every row.

    Parameters
    ----------
    path: the data file.
    labels: a label file, a list of names, or None to look for one next to the data
        (``label_type.pkl``, ``relation_list.json``, ``label.txt``...).
    format: one of FORMATS; ``auto`` decides from the extension and the first line.
    role: ``train`` (every row labelled), ``test`` (all rows blind or all labelled) or ``blind``
        (no row may carry a label).
    columns: generic format only: ``{"field": "column"}`` or ``"id=guid,sentence=text,end=exclusive"``.
    offsets: ``repair`` (default): an entity whose text is not at its offsets moves to the nearest
        occurrence of its text, when that is at most ``repair_window`` characters away and the only one
        that near (listed in ``Dataset.repairs``); ``strict``: every mismatch is a problem.
    repair_window: see ``offsets``.
    overlap: ``markers`` (default): subject and object spans that overlap are kept (listed in
        ``Dataset.overlaps``) and marked at their positions; ``error``: they are problems.
    marker: the marker the rows will get; ``entity_mask`` cannot show overlapping entities, so it refuses them.
    bad_rows: ``error`` (default): every problem refuses the file; ``skip`` (training files only): rows with
        row-level problems are left out and listed in ``Dataset.skipped`` (a problem of the whole file, such as
        a quote never closed, still refuses it). A test or blind file never loses a row.
    id_start: SemEval only (it has no ids): the id of the first row.

    Returns
    -------
    Dataset with examples in file order.

    Raises
    ------
    DataProblems (a DataError) listing every problem of the file, each naming file, row and field (for a
    training file its ``skippable`` rows and a ``hint`` naming ``--bad-rows skip``); DataError for a file that
    cannot be read at all; ConfigError for a bad format name or column mapping.

    Example
    -------
    >>> ds = read_dataset("train.tsv", "label_type.pkl")  # doctest: +SKIP
    >>> ds.examples[0].subj_text  # doctest: +SKIP
    '아성다이소'
    """
    path = Path(path)
    if format not in FORMATS:
        raise unknown_name("format", format, FORMATS)
    if role not in ROLES:
        raise unknown_name("role", role, ROLES)
    if offsets not in OFFSET_MODES:
        raise unknown_name("offsets mode", offsets, OFFSET_MODES)
    if bad_rows not in BAD_ROWS_MODES:
        raise unknown_name("bad-rows mode", bad_rows, BAD_ROWS_MODES)
    text = read_text(path)
    if format == "auto":
        format = detect_format(path, text)
    label_names = _resolve_labels(path, labels)
    problems = ProblemList(path)
    if format == "competition":
        rows, inclusive = _competition_rows(path, text, problems), True
    elif format == "klue":
        rows, inclusive = _klue_rows(path, text, problems), True
    elif format == "semeval":
        rows, inclusive = _semeval_rows(path, text, id_start, problems), False
    else:
        mapping, inclusive = parse_columns(columns)
        rows = _generic_rows(path, text, mapping, problems)
    if label_names is None:
        try:
            label_names = _labels_from_rows(path, rows)
        except DataError:
            problems.raise_if_any()  # rows that could not be read explain a file without labels better
            raise
    examples, repairs, overlaps = build_examples(path, rows, label_names, problems, inclusive=inclusive, role=role,
                                                 offsets=offsets, window=repair_window, overlap=overlap, marker=marker)
    if not problems:
        return Dataset(str(path), examples, label_names, repairs=repairs, overlaps=overlaps)
    kept = leave_out_bad_rows(rows, examples, repairs, overlaps, problems) if role == "train" else None
    if kept is not None and bad_rows == "skip" and kept[0]:
        return Dataset(str(path), kept[0], label_names, repairs=kept[1], overlaps=kept[2], skipped=kept[3])
    exc = DataProblems(problems.problems)
    if kept is not None and kept[0] and bad_rows == "error":
        # what --bad-rows skip would do: the rows it leaves out, listed in a file named by the kept data's hash
        exc.skippable = kept[3]
        exc.skip_list = list_name(Dataset(str(path), kept[0], label_names), "skipped")
        exc.hint = skip_hint(exc, "WORKDIR/data")
    raise exc


def detect_format(path: Path, text: str) -> str:
    """Guess the format from the extension and the first non-blank line."""
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        return "klue"
    first = next((line for line in split_lines(text) if line.strip()), "")
    if first.lstrip().startswith(("{", "[")):
        return "klue"
    if "<e1>" in first and "<e2>" in first:
        return "semeval"
    header = {c.strip().lower() for c in first.replace("\t", ",").split(",")}
    if {"sentence", "id"} <= header or {"sentence", "guid"} <= header:
        return "generic"
    if first.count("\t") >= 3:  # a competition row; a wrong column count is reported by its reader
        return "competition"
    raise DataError(
        f"{path}: row 1: cannot tell the format from the first line; expected a competition TSV "
        "(9 tab-separated columns), KLUE JSON/JSONL, SemEval tagged text or a CSV with a header "
        "(pass --format)"
    )


def parse_columns(columns: Mapping[str, str] | str | None) -> tuple[dict[str, str], bool]:
    """Parse a generic column mapping; returns (field -> column, inclusive_end)."""
    mapping = dict(GENERIC_FIELDS)
    inclusive = True
    items: Iterable[tuple[str, str]]
    if columns is None or columns == "":
        items = []
    elif isinstance(columns, str):
        items = []
        for part in columns.split(","):
            if "=" not in part:
                raise ConfigError(f"--columns: found '{part}', expected field=column pairs separated by commas")
            key, value = part.split("=", 1)
            items.append((key.strip(), value.strip()))
    else:
        items = columns.items()
    for key, value in items:
        if key == "end":
            if value not in ("inclusive", "exclusive"):
                raise ConfigError(f"--columns: end={value}, expected end=inclusive or end=exclusive")
            inclusive = value == "inclusive"
        elif key not in GENERIC_FIELDS:
            raise unknown_name("column field", key, list(GENERIC_FIELDS) + ["end"])
        else:
            mapping[key] = value
    return mapping, inclusive


def _resolve_labels(path: Path, labels) -> tuple[str, ...] | None:
    if labels is None:
        found = find_label_file(path)
        return read_label_file(found) if found else None
    if isinstance(labels, (str, Path)):
        return read_label_file(labels)
    names = tuple(labels)
    if len(set(names)) != len(names):
        raise ConfigError(f"label list has duplicates: {names}")
    return names


def _labels_from_rows(path: Path, rows: list[RawRow]) -> tuple[str, ...]:
    """No label file: the sorted label names of the data, no-relation first."""
    from kfold.core.metrics import default_no_relation

    names = sorted({r.label for r in rows if isinstance(r.label, str) and r.label != BLIND})
    if not names:
        raise DataError(f"{path}: no label file found next to it and no labels in it; pass --labels")
    if any(isinstance(r.label, int) for r in rows):
        raise DataError(f"{path}: integer labels need a label file (e.g. relation_list.json); pass --labels")
    nr = default_no_relation(names)
    if nr:
        names.remove(nr)
        names.insert(0, nr)
    return tuple(names)


def _competition_rows(path: Path, text: str, problems: ProblemList) -> list[RawRow]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar='"', doublequote=True)
    rows = []
    start = 1
    try:
        for record in reader:
            row = start
            start = reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            if len(record) != 9:
                if any("\n" in f for f in record):  # csv read on past the line end: an opening quote never closed
                    problems.add(row, "sentence", "<a double quote opened on this row, never closed>",
                                 "a quoted sentence closed with '\"' (or no quote at the start of the sentence)",
                                 "unclosed quote")
                    break  # the rest of the file was swallowed by the open quote
                problems.add(row, None, f"<{len(record)} columns>",
                             f"9 tab-separated columns ({', '.join(_COMPETITION_COLUMNS)})", "format")
                continue
            rid, sent, w1, s1, e1, w2, s2, e2, label = record
            rows.append(RawRow(row, rid, sent, (s1, e1, None, w1), (s2, e2, None, w2), label))
    except csv.Error as exc:
        problems.add(reader.line_num, "sentence", f"<CSV error: {exc}>",
                     "a tab-separated row, quoted sentences closed with '\"'", "broken CSV")
    return rows


def _klue_rows(path: Path, text: str, problems: ProblemList) -> list[RawRow]:
    stripped = text.lstrip()
    items: list[tuple[int, Any]] = []
    if stripped.startswith("["):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise data_error(path, exc.lineno, None, f"<invalid JSON: {exc.msg}>", "a JSON list of objects") from None
        items = list(enumerate(obj, start=1))
    else:
        for lineno, line in enumerate(split_lines(text), start=1):
            if not line.strip():
                continue
            try:
                items.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.add(lineno, None, f"<invalid JSON: {exc.msg}>", "one JSON object per line", "format")
    rows = []
    for row, item in items:
        try:
            rows.append(_klue_row(path, row, item))
        except DataError as exc:
            problems.add_error(exc, row, "format")
    return rows


def _klue_row(path: Path, row: int, item: Any) -> RawRow:
    """One KLUE object as a RawRow; DataError for a missing or malformed field."""
    if not isinstance(item, dict):
        raise data_error(path, row, None, f"<a {type(item).__name__}>", "a JSON object")
    for key in ("sentence", "subject_entity", "object_entity"):
        if key not in item:
            raise data_error(path, row, key, "<missing>", f"a '{key}' field")
    ents = []
    for key in ("subject_entity", "object_entity"):
        ent = item[key]
        if isinstance(ent, str):  # exports of the boostcamp CSV store a Python dict literal
            try:
                ent = ast.literal_eval(ent)
            except (ValueError, SyntaxError):
                raise data_error(path, row, key, ent, "an object {word, start_idx, end_idx, type}") from None
        if not isinstance(ent, dict):
            raise data_error(path, row, key, ent, "an object {word, start_idx, end_idx, type}")
        for sub in ("start_idx", "end_idx"):
            if sub not in ent:
                raise data_error(path, row, f"{key}.{sub}", "<missing>", "an integer offset")
        ents.append((ent["start_idx"], ent["end_idx"], ent.get("type"), ent.get("word")))
    label = item.get("label", item.get("label_name"))
    rid = item.get("guid", item.get("id", str(row)))
    return RawRow(row, rid, item["sentence"], ents[0], ents[1], label)


def _semeval_rows(path: Path, text: str, id_start: int, problems: ProblemList) -> list[RawRow]:
    rows = []
    n = 0
    for lineno, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        n += 1  # ids count every data line, so a bad line does not shift the ids of the lines after it
        if "\t" not in line:
            problems.add(lineno, None, line, "label<TAB>sentence with <e1>..</e1> and <e2>..</e2> tags", "format")
            continue
        label, tagged = line.split("\t", 1)
        try:
            sentence, spans = _strip_tags(path, lineno, tagged)
        except DataError as exc:
            problems.add_error(exc, lineno, "format")
            continue
        rows.append(RawRow(lineno, str(id_start + n - 1), sentence,
                           (spans["e1"][0], spans["e1"][1], None, None),
                           (spans["e2"][0], spans["e2"][1], None, None), label.strip()))
    return rows


def _strip_tags(path: Path, lineno: int, tagged: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """Remove <e1>/<e2> tags (and the one space inside each tag pair), return text and exclusive spans."""
    out: list[str] = []
    spans: dict[str, list[int]] = {}
    i = 0
    while i < len(tagged):
        if tagged.startswith(("<e1>", "<e2>", "</e1>", "</e2>"), i):
            closing = tagged[i + 1] == "/"
            name = tagged[i + 2 : i + 4] if closing else tagged[i + 1 : i + 3]
            taglen = 5 if closing else 4
            pos = len("".join(out))
            if closing:
                if name not in spans or len(spans[name]) != 1:
                    raise data_error(path, lineno, name, tagged, f"<{name}> before </{name}>, each once")
                if out and out[-1].endswith(" "):
                    out[-1] = out[-1][:-1]
                    pos -= 1
                spans[name].append(pos)
                i += taglen
            else:
                if name in spans:
                    raise data_error(path, lineno, name, tagged, f"one <{name}> tag")
                spans[name] = [pos]
                i += taglen
                if tagged.startswith(" ", i):
                    i += 1
            continue
        out.append(tagged[i])
        i += 1
    for name in ("e1", "e2"):
        if name not in spans or len(spans[name]) != 2:
            raise data_error(path, lineno, name, tagged, f"one <{name}> .. </{name}> pair")
    return "".join(out), {k: (v[0], v[1]) for k, v in spans.items()}


def _generic_rows(path: Path, text: str, mapping: dict[str, str], problems: ProblemList) -> list[RawRow]:
    first = split_lines(text)[0]
    delimiter = "\t" if path.suffix.lower() == ".tsv" or first.count("\t") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"')
    try:
        header = [c.strip() for c in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: the file is empty") from None
    col = {name: i for i, name in enumerate(header)}
    for fld in _GENERIC_REQUIRED:
        if mapping[fld] not in col:
            raise data_error(path, 1, fld, f"<columns {header}>", f"a column named '{mapping[fld]}' (map it with --columns {fld}=NAME)")

    def get(record, fld):
        idx = col.get(mapping[fld])
        return record[idx] if idx is not None and idx < len(record) and record[idx] != "" else None

    rows = []
    start = 2
    try:
        for record in reader:
            row, start = start, reader.line_num + 1
            if not record or all(not c.strip() for c in record):
                continue
            if len(record) != len(header):
                problems.add(row, None, f"<{len(record)} columns>", f"{len(header)} columns as in the header", "format")
                continue
            rows.append(RawRow(row, get(record, "id"), get(record, "sentence") or "",
                               (get(record, "subj_start"), get(record, "subj_end"), get(record, "subj_type"), get(record, "subj_word")),
                               (get(record, "obj_start"), get(record, "obj_end"), get(record, "obj_type"), get(record, "obj_word")),
                               get(record, "label")))
    except csv.Error as exc:
        problems.add(reader.line_num, None, f"<CSV error: {exc}>", "a well-formed CSV row", "broken CSV")
    return rows


def dataset_summary(ds: Dataset) -> str:
    """One line: rows, labels, types, repairs."""
    from collections import Counter

    counts = Counter(ex.label for ex in ds.examples if ex.label is not None)
    top = ", ".join(f"{k} {v}" for k, v in counts.most_common(3))
    kind = "labelled" if ds.labelled else "blind"
    types = "with entity types" if ds.has_types else "no entity types"
    return f"{ds.path}: {len(ds)} rows ({kind}), {len(ds.label_names)} labels, {types}" + (f"; most common: {top}" if top else "")
