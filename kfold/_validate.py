"""Row validation shared by every reader: offsets, entity text, overlap, ids, labels, role. Torch-free."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from ._errors import data_error
from ._labels import BLIND
from ._schema import Example, Span

#: Integer labels that mean "blind" in KLUE-style test files (the boostcamp release uses 100).
_BLIND_INTS = (-1, 100)


class RawRow(NamedTuple):
    """A row as a reader found it, before validation. Entities are (start, end, type, word)."""

    row: int
    id: Any
    sentence: Any
    subj: tuple
    obj: tuple
    label: Any


def build_examples(path: Path, rows: Sequence[RawRow], label_names: Sequence[str], *, inclusive: bool,
                   role: str, repair: bool) -> tuple[list[Example], int]:
    """Validate raw rows and build Examples; returns (examples, number of repaired entities).

    Raises DataError at the first bad row, naming the file, row and field.
    """
    index = {name: i for i, name in enumerate(label_names)}
    seen_ids: dict[str, int] = {}
    examples: list[Example] = []
    repaired = 0
    first_kind: tuple[int, bool] | None = None
    for raw in rows:
        row = raw.row
        rid = "" if raw.id is None else str(raw.id).strip()
        if not rid:
            raise data_error(path, row, "id", raw.id, "a non-empty id")
        if rid in seen_ids:
            raise data_error(path, row, "id", rid, f"unique ids (already at row {seen_ids[rid]})")
        seen_ids[rid] = row
        sentence = raw.sentence
        if not isinstance(sentence, str) or not sentence.strip():
            raise data_error(path, row, "sentence", sentence, "a non-empty sentence")
        spans = []
        for which, ent in (("subject", raw.subj), ("object", raw.obj)):
            span, fixed = _span(path, row, which, sentence, ent, inclusive, repair)
            spans.append(span)
            repaired += fixed
        subj, obj = spans
        if subj.start < obj.end and obj.start < subj.end:
            raise data_error(path, row, "object", f"<object [{obj.start},{obj.end}) overlapping subject [{subj.start},{subj.end})>",
                             "subject and object spans that do not overlap")
        label = _label(path, row, raw.label, index, label_names)
        if role == "train" and label is None:
            raise data_error(path, row, "label", raw.label if raw.label is not None else "<missing>",
                             "a label name (this looks like a test file: pass it with --test)")
        if role == "blind" and label is not None:
            raise data_error(path, row, "label", raw.label, f"'{BLIND}' (a blind test file must not carry labels)")
        if role == "test":
            if first_kind is None:
                first_kind = (row, label is not None)
            elif first_kind[1] != (label is not None):
                state = "labelled" if first_kind[1] else "blind"
                raise data_error(path, row, "label", raw.label, f"{'a label' if first_kind[1] else repr(BLIND)} "
                                 f"like row {first_kind[0]} ({state}): a test file is all blind or all labelled")
        examples.append(Example(rid, sentence, subj, obj, label, row))
    if not examples:
        raise data_error(path, None, None, "<no rows>", "at least one data row")
    return examples, repaired


def _to_int(path: Path, row: int, field: str, value: Any) -> int:
    if isinstance(value, bool):
        raise data_error(path, row, field, value, "an integer offset")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise data_error(path, row, field, "<missing>" if value is None else value, "an integer offset")


def _span(path: Path, row: int, which: str, sentence: str, ent: tuple, inclusive: bool, repair: bool) -> tuple[Span, int]:
    """Validate one entity; returns its Span (exclusive end) and 1 if its offsets were repaired."""
    start_raw, end_raw, etype, word = ent
    start = _to_int(path, row, f"{which} start", start_raw)
    end_given = _to_int(path, row, f"{which} end", end_raw)
    end = end_given + 1 if inclusive else end_given
    etype = etype.strip() if isinstance(etype, str) and etype.strip() else None
    if word is not None and not isinstance(word, str):
        word = str(word)
    if word is not None and not word:
        raise data_error(path, row, f"{which} word", word, "a non-empty entity text")
    ok_range = 0 <= start < end <= len(sentence)
    matches = ok_range and (word is None or sentence[start:end] == word)
    if matches:
        return Span(start, end, etype), 0
    occurrences = _occurrences(sentence, word) if word else []
    if repair and len(occurrences) == 1:
        s = occurrences[0]
        return Span(s, s + len(word), etype), 1
    end_kind = "inclusive" if inclusive else "exclusive"
    if not ok_range:
        raise data_error(path, row, f"{which} end" if start >= 0 and start < len(sentence) else f"{which} start",
                         f"<[{start}, {end_given}] ({end_kind} end)>",
                         f"offsets within the sentence of {len(sentence)} characters with start <= end")
    hint = (" (--repair-offsets can fix it: the text occurs once)" if len(occurrences) == 1
            else f" (the text occurs {len(occurrences)} times, so it cannot be repaired)")
    raise data_error(path, row, f"{which} word", f"<'{word}' at [{start}, {end_given}] reads '{sentence[start:end]}'>",
                     f"the entity text at its offsets ({end_kind} end){hint}")


def _occurrences(sentence: str, word: str) -> list[int]:
    """Start positions of ``word`` in ``sentence``, overlapping ones included."""
    out, i = [], sentence.find(word)
    while i >= 0:
        out.append(i)
        i = sentence.find(word, i + 1)
    return out


def _label(path: Path, row: int, raw: Any, index: dict, names: Sequence[str]) -> str | None:
    """A label name, or None for a blind row."""
    if raw is None or (isinstance(raw, str) and raw.strip() in ("", BLIND)):
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        if 0 <= raw < len(names):
            return names[raw]
        if raw in _BLIND_INTS:
            return None
        raise data_error(path, row, "label", raw, f"a label index 0..{len(names) - 1}")
    name = str(raw).strip()
    if name in index:
        return name
    close = difflib.get_close_matches(name, list(index), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise data_error(path, row, "label", name, f"one of the {len(names)} labels of the label file{hint}")
