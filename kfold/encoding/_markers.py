"""Entity representations: markers inserted by character position, never by string replace. Torch-free.

Subject is entity 1, object is entity 2, whatever their order in the sentence.

==========================  ===========================================  ======================
marker                      subject / object become                      new special tokens
==========================  ===========================================  ======================
none                        unchanged                                    -
entity_marker               ``[E1] s [/E1]`` / ``[E2] o [/E2]``          [E1] [/E1] [E2] [/E2]
entity_marker_punct         ``@ s @`` / ``# o #``                        -
typed_entity_marker         ``<S:PER> s </S:PER>`` / ``<O:LOC> o </O:LOC>``  one pair per type
typed_entity_marker_punct   ``@ * PER * s @`` / ``# ^ LOC ^ o #``        -
entity_mask                 ``[SUBJ-PER]`` / ``[OBJ-LOC]`` (untyped: ``[SUBJ]``) one per type
==========================  ===========================================  ======================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from kfold.core.config import MARKERS, TYPED_MARKERS
from kfold.core.errors import ConfigError, unknown_name
from kfold.data import Example



@dataclass(frozen=True)
class Marked:
    """A marked sentence and, for each entity, character spans in it (exclusive ends).

    ``body``: the entity text itself (or its mask token); ``whole``: prefix + body + suffix.
    """

    text: str
    subj_body: tuple[int, int]
    subj_whole: tuple[int, int]
    obj_body: tuple[int, int]
    obj_whole: tuple[int, int]


def check_marker(marker: str, has_types: bool, where: str = "the data") -> None:
    """Raise ConfigError for an unknown marker, or a typed marker on data without entity types."""
    if marker not in MARKERS:
        raise unknown_name("marker", marker, MARKERS)
    if marker in TYPED_MARKERS and not has_types:
        raise ConfigError(
            f"marker '{marker}' needs entity types, but {where} has none (the competition TSV and "
            "SemEval formats carry no types); use entity_marker_punct or entity_marker, or data with types"
        )


def _affixes(marker: str, role: str, etype: str | None, text: str) -> tuple[str, str, str]:
    """(prefix, body, suffix) for one entity; role is 'S' (subject) or 'O' (object)."""
    n = "1" if role == "S" else "2"
    if marker == "none":
        return "", text, ""
    if marker == "entity_marker":
        return f"[E{n}] ", text, f" [/E{n}]"
    if marker == "entity_marker_punct":
        ch = "@" if role == "S" else "#"
        return f"{ch} ", text, f" {ch}"
    if marker == "typed_entity_marker":
        return f"<{role}:{etype}> ", text, f" </{role}:{etype}>"
    if marker == "typed_entity_marker_punct":
        ch, sep = ("@", "*") if role == "S" else ("#", "^")
        return f"{ch} {sep} {etype} {sep} ", text, f" {ch}"
    if marker == "entity_mask":
        name = "SUBJ" if role == "S" else "OBJ"
        return "", f"[{name}-{etype}]" if etype else f"[{name}]", ""
    raise unknown_name("marker", marker, MARKERS)


def mark(example: Example, marker: str) -> Marked:
    """Insert the markers of ``marker`` around both entities, by position.

    Example
    -------
    >>> from kfold.data import Example, Span
    >>> ex = Example("1", "Kim works at Samsung.", Span(0, 3, "PER"), Span(13, 20, "ORG"))
    >>> mark(ex, "typed_entity_marker_punct").text
    '@ * PER * Kim @ works at # ^ ORG ^ Samsung #.'
    """
    ents = [("S", example.subj), ("O", example.obj)]
    ents.sort(key=lambda item: item[1].start)
    out: list[str] = []
    pos = 0  # length of the marked text so far
    cursor = 0  # position in the original sentence
    spans: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    for role, span in ents:
        gap = example.sentence[cursor : span.start]
        out.append(gap)
        pos += len(gap)
        prefix, body, suffix = _affixes(marker, role, span.type, example.sentence[span.start : span.end])
        whole_start = pos
        body_start = pos + len(prefix)
        body_end = body_start + len(body)
        out.append(prefix + body + suffix)
        pos = body_end + len(suffix)
        spans[role] = ((body_start, body_end), (whole_start, pos))
        cursor = span.end
    out.append(example.sentence[cursor:])
    return Marked("".join(out), spans["S"][0], spans["S"][1], spans["O"][0], spans["O"][1])


def marker_tokens(marker: str, types: Iterable[str | None]) -> list[str]:
    """Special tokens the tokenizer must learn for ``marker`` given the entity types seen (sorted)."""
    types = sorted({t for t in types if t})
    if marker == "entity_marker":
        return ["[E1]", "[/E1]", "[E2]", "[/E2]"]
    if marker == "typed_entity_marker":
        return [tok for role in "SO" for t in types for tok in (f"<{role}:{t}>", f"</{role}:{t}>")]
    if marker == "entity_mask":
        return ["[SUBJ]", "[OBJ]"] + [f"[{name}-{t}]" for name in ("SUBJ", "OBJ") for t in types]
    return []


def entity_types(datasets: Sequence) -> list[str]:
    """All entity types in the given datasets (subjects and objects), sorted."""
    return sorted({t for ds in datasets for ex in ds.examples for t in (ex.subj.type, ex.obj.type) if t})
