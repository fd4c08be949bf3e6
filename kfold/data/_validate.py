"""Row validation shared by every reader: offsets (with repair), entity text, overlapping spans, ids, labels, role.

Torch-free. Every problem of a file is collected (one line each, naming file, row and field) instead of
stopping at the first, so one pass over a dirty file shows everything that needs fixing.

Offset repair (``offsets="repair"``, the default): an entity whose text is not at its offsets, but occurs in
the sentence, moves to the occurrence whose start is nearest to the given start, when that is at most
``window`` characters away and no other occurrence is equally near. The source competition's own train.tsv
has 24 such spans, each shifted right by 1 or 2 characters. Anything else stays a problem.

Overlapping spans (``overlap="markers"``, the default): a subject and object that share characters (nested names,
an organisation inside its own title; the source competition's train.tsv has 3) are kept and listed in
``Dataset.overlaps``; the markers go at both spans' positions. ``overlap="error"`` refuses them, and so does the
``entity_mask`` marker, which replaces each entity's text and so cannot show two overlapping entities.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from kfold.core.config import MARKERS
from kfold.core.errors import DataProblems, ProblemList, unknown_name

from ._labels import BLIND
from ._schema import Dataset, Example, Overlap, Repair, Skipped, Span, overlap_kind

#: Integer labels that mean "blind" in KLUE-style test files (the boostcamp release uses 100).
_BLIND_INTS = (-1, 100)
#: ``offsets=``: move a misplaced entity to its nearest occurrence, or refuse every mismatch.
OFFSET_MODES = ("repair", "strict")
#: ``overlap=``: mark overlapping subject and object spans at their positions, or refuse them.
OVERLAP_MODES = ("markers", "error")
#: ``bad_rows=``: refuse a training file with rows that cannot be repaired, or train without those rows.
BAD_ROWS_MODES = ("error", "skip")
#: The markers that can show two overlapping entities (every one but entity_mask).
OVERLAP_MARKERS = tuple(m for m in MARKERS if m != "entity_mask")


class RawRow(NamedTuple):
    """A row as a reader found it, before validation. Entities are (start, end, type, word)."""

    row: int
    id: Any
    sentence: Any
    subj: tuple
    obj: tuple
    label: Any


def build_examples(path: Path, rows: Sequence[RawRow], label_names: Sequence[str], problems: ProblemList, *,
                   inclusive: bool, role: str, offsets: str = "repair", window: int = 5, overlap: str = "markers",
                   marker: str | None = None) -> tuple[list[Example], list[Repair], list[Overlap]]:
    """Validate raw rows and build Examples; returns (examples of the rows without problems, repairs made, rows
    whose subject and object overlap). ``marker``: the marker the rows will get (``entity_mask`` refuses
    overlapping spans).

    Every problem found is added to ``problems`` (the caller raises them together).
    """
    if offsets not in OFFSET_MODES:
        raise unknown_name("offsets mode", offsets, OFFSET_MODES)
    if overlap not in OVERLAP_MODES:
        raise unknown_name("overlap mode", overlap, OVERLAP_MODES)
    index = {name: i for i, name in enumerate(label_names)}
    seen_ids: dict[str, int] = {}
    examples: list[Example] = []
    repairs: list[Repair] = []
    overlaps: list[Overlap] = []
    first_kind: tuple[int, bool] | None = None
    for raw in rows:
        row = raw.row
        before = len(problems.problems)
        rid = "" if raw.id is None else str(raw.id).strip()
        if not rid:
            problems.add(row, "id", raw.id, "a non-empty id", "missing id")
        elif rid in seen_ids:
            problems.add(row, "id", rid, f"unique ids (already at row {seen_ids[rid]})", "duplicate id")
        else:
            seen_ids[rid] = row
        sentence = raw.sentence
        spans: list[Span | None] = [None, None]
        if not isinstance(sentence, str) or not sentence.strip():
            problems.add(row, "sentence", sentence, "a non-empty sentence", "empty sentence")
        else:
            for i, (which, ent) in enumerate((("subject", raw.subj), ("object", raw.obj))):
                spans[i], fix = _span(problems, row, which, sentence, ent, inclusive, offsets, window)
                if fix is not None:
                    repairs.append(Repair(row, rid, which, fix[0], fix[1], fix[2]))
        subj, obj = spans
        kind = overlap_kind(subj, obj) if subj is not None and obj is not None else None
        if kind is not None:
            found = f"<object [{obj.start},{obj.end}) {kind} with subject [{subj.start},{subj.end})>"
            if overlap == "error":
                problems.add(row, "object", found, "subject and object spans that do not overlap (--overlap markers "
                             "marks both at their positions)", "overlapping entities")
            elif marker == "entity_mask":
                problems.add(row, "object", found, "a marker that can show two overlapping entities, one of "
                             f"{', '.join(OVERLAP_MARKERS)} (entity_mask replaces each entity's text)",
                             "overlapping entities under entity_mask")
        label = _label(problems, row, raw.label, index, label_names)
        if label is not False:
            if role == "train" and label is None:
                problems.add(row, "label", raw.label if raw.label is not None else "<missing>",
                             "a label name (this looks like a test file: pass it with --test)", "missing label")
            if role == "blind" and label is not None:
                problems.add(row, "label", raw.label, f"'{BLIND}' (a blind test file must not carry labels)", "label in a blind file")
            if role == "test":
                if first_kind is None:
                    first_kind = (row, label is not None)
                elif first_kind[1] != (label is not None):
                    state = "labelled" if first_kind[1] else "blind"
                    problems.add(row, "label", raw.label, f"{'a label' if first_kind[1] else repr(BLIND)} like row "
                                 f"{first_kind[0]} ({state}): a test file is all blind or all labelled", "blind and labelled mixed")
        if len(problems.problems) == before:
            examples.append(Example(rid, sentence, subj, obj, label or None, row))
            if kind is not None:
                overlaps.append(Overlap(row, rid, (subj.start, subj.end), (obj.start, obj.end), kind))
    if not rows and not problems:
        problems.add(None, None, "<no rows>", "at least one data row", "empty file")
    return examples, repairs, overlaps


def leave_out_bad_rows(rows: Sequence[RawRow], examples: list[Example], repairs: list[Repair],
                       overlaps: list[Overlap], problems: ProblemList
                       ) -> tuple[list[Example], list[Repair], list[Overlap], list[Skipped]] | None:
    """``--bad-rows skip`` on a training file: the examples, repairs and overlaps without the rows that have a
    row-level problem, and those rows (one entry per problem). A duplicated id cannot say which of its rows is
    right, so every row carrying it is left out. None when a problem is the file's (nothing can be skipped then).
    """
    if not problems or any(not p.row_level for p in problems.problems):
        return None
    id_of = {raw.row: "" if raw.id is None else str(raw.id).strip() for raw in rows}
    skipped = [Skipped(p.row, id_of.get(p.row, ""), p.field or "", p.text, p.kind) for p in problems.problems]
    duplicated = {id_of[p.row] for p in problems.problems if p.kind == "duplicate id"}
    for ex in examples:  # the first row of a duplicated id passed validation; the id is still undecidable
        if ex.id in duplicated:
            later = sorted(p.row for p in problems.problems if p.kind == "duplicate id" and id_of[p.row] == ex.id)
            skipped.append(Skipped(ex.row, ex.id, "id", f"{problems.path}: row {ex.row}, field 'id': id '{ex.id}' "
                                   f"is also at row {', '.join(map(str, later))}", "duplicate id"))
    gone = {s.row for s in skipped}
    return ([ex for ex in examples if ex.row not in gone], [r for r in repairs if r.row not in gone],
            [o for o in overlaps if o.row not in gone], sorted(skipped, key=lambda s: s.row))


def list_name(ds: Dataset, kind: str) -> str:
    """The file name of one of a dataset's lists (``repairs``, ``overlaps``, ``skipped``): ``<kind>-<file>-<hash of
    the data as read>.csv``, so the list belongs to exactly that reading of the file."""
    return f"{kind}-{Path(ds.path).stem or 'data'}-{ds.content_hash()[:10]}.csv"


def skip_hint(exc: DataProblems, folder: str | Path) -> str:
    """The last line of a refused training file: how many rows ``--bad-rows skip`` would leave out, and where it
    would list them (``folder``: the workdir's data folder)."""
    n = len({s.row for s in exc.skippable})
    return (f"{n} row{'s' if n != 1 else ''} cannot be repaired; --bad-rows skip trains without "
            f"{'it' if n == 1 else 'them'} (listed in {Path(folder) / exc.skip_list})")


def _to_int(problems: ProblemList, row: int, field: str, value: Any) -> int | None:
    """The integer offset, or None after adding a problem."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    problems.add(row, field, "<missing>" if value is None else value, "an integer offset", "offsets")
    return None


def nearest_occurrence(sentence: str, word: str, start: int, window: int) -> tuple[int | None, str]:
    """Where a misplaced entity text belongs: (the start of its nearest occurrence, "") or (None, why not).

    The nearest occurrence must be at most ``window`` characters from ``start`` and the only one that near.

    >>> nearest_occurrence("Kim met Kim.", "Kim", 6, 5)
    (8, '')
    """
    occurrences, i = [], sentence.find(word)
    while i >= 0:
        occurrences.append(i)
        i = sentence.find(word, i + 1)
    if not occurrences:
        return None, "the text does not occur in the sentence"
    distance = min(abs(o - start) for o in occurrences)
    nearest = [o for o in occurrences if abs(o - start) == distance]
    if len(nearest) > 1:
        return None, (f"the text occurs {len(occurrences)} times and the ones at {nearest[0]} and {nearest[1]} are "
                      "equally near, so it cannot be repaired")
    if distance > window:
        return None, (f"its nearest occurrence (at {nearest[0]}) is {distance} characters away, more than "
                      f"--repair-window {window}")
    return nearest[0], ""


def _span(problems: ProblemList, row: int, which: str, sentence: str, ent: tuple, inclusive: bool, offsets: str,
          window: int) -> tuple[Span | None, tuple[str, tuple[int, int], tuple[int, int]] | None]:
    """Validate one entity; returns (its Span with an exclusive end, or None after a problem) and, when its
    offsets were repaired, (text, offsets as given, offsets repaired) in the file's own end convention."""
    start_raw, end_raw, etype, word = ent
    start = _to_int(problems, row, f"{which} start", start_raw)
    end_given = _to_int(problems, row, f"{which} end", end_raw)
    if start is None or end_given is None:
        return None, None
    shift = 1 if inclusive else 0
    end = end_given + shift
    etype = etype.strip() if isinstance(etype, str) and etype.strip() else None
    if word is not None and not isinstance(word, str):
        word = str(word)
    if word is not None and not word:
        problems.add(row, f"{which} word", word, "a non-empty entity text", "empty entity")
        return None, None
    ok_range = 0 <= start < end <= len(sentence)
    if ok_range and (word is None or sentence[start:end] == word):
        return Span(start, end, etype), None
    end_kind = "inclusive" if inclusive else "exclusive"
    if word is None:
        problems.add(row, f"{which} end" if 0 <= start < len(sentence) else f"{which} start",
                     f"<[{start}, {end_given}] ({end_kind} end)>",
                     f"offsets within the sentence of {len(sentence)} characters with start <= end", "offsets")
        return None, None
    moved, why = nearest_occurrence(sentence, word, start, window)
    if moved is not None and offsets == "repair":
        new_end = moved + len(word)
        return Span(moved, new_end, etype), (word, (start, end_given), (moved, new_end - shift))
    reads = repr(sentence[start:end]) if ok_range else "outside the sentence"
    hint = (f" (--offsets repair would move it {abs(moved - start)} character(s))" if moved is not None
            else f" ({why})")
    problems.add(row, f"{which} word", f"<'{word}' at [{start}, {end_given}] reads {reads}>",
                 f"the entity text at its offsets ({end_kind} end){hint}", "offsets")
    return None, None


def _label(problems: ProblemList, row: int, raw: Any, index: dict, names: Sequence[str]) -> str | None | bool:
    """A label name, None for a blind row, or False after adding a problem."""
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", BLIND)):
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        if 0 <= raw < len(names):
            return names[raw]
        if raw in _BLIND_INTS:
            return None
        problems.add(row, "label", raw, f"a label index 0..{len(names) - 1}", "unknown label")
        return False
    name = str(raw).strip()
    if name in index:
        return name
    close = difflib.get_close_matches(name, list(index), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    problems.add(row, "label", name, f"one of the {len(names)} labels of the label file{hint}", "unknown label")
    return False

