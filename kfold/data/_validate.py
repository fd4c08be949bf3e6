"""Row validation shared by every reader: offsets (with repair), entity text, overlap, ids, labels, role.

Torch-free. Every problem of a file is collected (one line each, naming file, row and field) instead of
stopping at the first, so one pass over a dirty file shows everything that needs fixing.

Offset repair (``offsets="repair"``, the default): an entity whose text is not at its offsets, but occurs in
the sentence, moves to the occurrence whose start is nearest to the given start, when that is at most
``window`` characters away and no other occurrence is equally near. The source competition's own train.tsv
has 24 such spans, each shifted right by 1 or 2 characters. Anything else stays a problem.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from kfold.core.errors import ProblemList, unknown_name

from ._labels import BLIND
from ._schema import Example, Repair, Span

#: Integer labels that mean "blind" in KLUE-style test files (the boostcamp release uses 100).
_BLIND_INTS = (-1, 100)
#: ``offsets=``: move a misplaced entity to its nearest occurrence, or refuse every mismatch.
OFFSET_MODES = ("repair", "strict")


class RawRow(NamedTuple):
    """A row as a reader found it, before validation. Entities are (start, end, type, word)."""

    row: int
    id: Any
    sentence: Any
    subj: tuple
    obj: tuple
    label: Any


def build_examples(path: Path, rows: Sequence[RawRow], label_names: Sequence[str], problems: ProblemList, *,
                   inclusive: bool, role: str, offsets: str = "repair", window: int = 5
                   ) -> tuple[list[Example], list[Repair]]:
    """Validate raw rows and build Examples; returns (examples of the rows without problems, repairs made).

    Every problem found is added to ``problems`` (the caller raises them together).
    """
    if offsets not in OFFSET_MODES:
        raise unknown_name("offsets mode", offsets, OFFSET_MODES)
    index = {name: i for i, name in enumerate(label_names)}
    seen_ids: dict[str, int] = {}
    examples: list[Example] = []
    repairs: list[Repair] = []
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
        if subj is not None and obj is not None and subj.start < obj.end and obj.start < subj.end:
            problems.add(row, "object", f"<object [{obj.start},{obj.end}) overlapping subject [{subj.start},{subj.end})>",
                         "subject and object spans that do not overlap", "overlapping entities")
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
    if not rows and not problems:
        problems.add(None, None, "<no rows>", "at least one data row", "empty file")
    return examples, repairs


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

