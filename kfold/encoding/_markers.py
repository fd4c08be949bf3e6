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

Overlapping spans (nested names, an organisation inside its own title) get their markers at their positions too.
Where two markers fall on one position the rule is fixed: a span that ends there closes before one that starts
there opens; of two spans that start together the longer one (for identical spans, the subject) opens first and
closes last; spans that cross get crossing markers. So subject ``세계은행`` [2, 6) and object ``전 세계`` [0, 4) of
"전 세계은행" become ``# 전 @ 세계 #은행 @`` with entity_marker_punct. ``Marked.*_skip`` holds the other entity's
marker characters inside an entity's text, which its pooled vector leaves out. ``entity_mask`` replaces each
entity's text and cannot show two overlapping entities (the data layer refuses such rows with it).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from kfold.core.config import MARKERS, TYPED_MARKERS
from kfold.core.errors import ConfigError, unknown_name
from kfold.data import Example


@dataclass(frozen=True)
class Marked:
    """A marked sentence and, for each entity, character spans in it (exclusive ends).

    ``body``: the entity text itself (or its mask token); ``whole``: prefix + body + suffix. ``skip``: the other
    entity's prefix and suffix where they fall inside this entity's body (overlapping spans only; empty tuple
    otherwise), which the entity's pooled vector leaves out.
    """

    text: str
    subj_body: tuple[int, int]
    subj_whole: tuple[int, int]
    obj_body: tuple[int, int]
    obj_whole: tuple[int, int]
    subj_skip: tuple[tuple[int, int], ...] = ()
    obj_skip: tuple[tuple[int, int], ...] = ()

    def edges(self) -> set[int]:
        """Positions where an entity's text or a marker meets the text beside it: both ends of each entity's body
        and of its whole (a marker's outer side), and of the other entity's markers inside it."""
        spans = (self.subj_body, self.subj_whole, self.obj_body, self.obj_whole, *self.subj_skip, *self.obj_skip)
        return {q for span in spans for q in span if 0 < q < len(self.text)}

    def spaced(self, at: Iterable[int]) -> "Marked":
        """This marking with a space inserted at each position in ``at``: a span that starts there starts after
        the space, one that ends there ends before it, so the space lies outside both."""
        at = sorted(set(at))
        text = "".join(self.text[a:b] + (" " if b < len(self.text) else "")
                       for a, b in zip([0] + at, at + [len(self.text)]))

        def move(span: tuple[int, int]) -> tuple[int, int]:
            return span[0] + bisect_right(at, span[0]), span[1] + bisect_left(at, span[1])

        return replace(self, text=text, subj_body=move(self.subj_body), subj_whole=move(self.subj_whole),
                       obj_body=move(self.obj_body), obj_whole=move(self.obj_whole),
                       subj_skip=tuple(map(move, self.subj_skip)), obj_skip=tuple(map(move, self.obj_skip)))


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

    A space separates each marker from its entity, so a marker touches the sentence's text only on its outer side
    (``대한민국@ 정부 @는`` for the entity ``정부``); where a tokenizer would join that side to the neighbouring
    text in one token, :func:`kfold.encoding.encode` adds a space there too (:meth:`Marked.spaced`).

    Example
    -------
    >>> from kfold.data import Example, Span
    >>> ex = Example("1", "Kim works at Samsung.", Span(0, 3, "PER"), Span(13, 20, "ORG"))
    >>> mark(ex, "typed_entity_marker_punct").text
    '@ * PER * Kim @ works at # ^ ORG ^ Samsung #.'
    """
    sentence = example.sentence
    spans = {"S": example.subj, "O": example.obj}
    # opening order: earlier start first; starting together, the longer span (it closes last); identical, the subject
    order = sorted(spans, key=lambda r: (spans[r].start, -spans[r].end, r != "S"))
    rank = {role: n for n, role in enumerate(order)}
    # (position, phase, tie-break): at one position spans close (phase 0) before others open (phase 1); the span
    # opened later closes first
    events = sorted([(spans[r].start, 1, rank[r], r) for r in spans] + [(spans[r].end, 0, -rank[r], r) for r in spans])
    masked = marker == "entity_mask"  # the mask token replaces the entity's text
    if masked and spans["S"].start < spans["O"].end and spans["O"].start < spans["S"].end:
        raise ConfigError(f"row {example.row} (id {example.id}): entity_mask cannot show two overlapping entities")
    affixes = {r: _affixes(marker, r, spans[r].type, sentence[spans[r].start : spans[r].end]) for r in spans}
    out: list[str] = []
    pos = cursor = 0  # length of the marked text so far; position in the original sentence
    opened: dict[str, tuple[int, int]] = {}  # role -> its prefix's characters in the marked text
    closed: dict[str, tuple[int, int]] = {}  # role -> its suffix's characters
    for at, phase, _, role in events:
        # the original text up to this marker, except a masked entity's own text (between its open and close)
        gap = "" if masked and phase == 0 else sentence[cursor:at]
        out.append(gap)
        pos += len(gap)
        cursor = at
        prefix, body, suffix = affixes[role]
        piece = (prefix + body if masked else prefix) if phase == 1 else suffix
        if phase == 1:
            opened[role] = (pos, pos + len(prefix) + (len(body) if masked else 0))
        else:
            closed[role] = (pos, pos + len(suffix))
        out.append(piece)
        pos += len(piece)
    out.append(sentence[cursor:])
    text = "".join(out)

    def body_of(role: str) -> tuple[int, int]:
        if masked:  # the mask token is the body
            return opened[role][1] - len(affixes[role][1]), opened[role][1]
        return opened[role][1], closed[role][0]

    def skip_of(role: str) -> tuple[tuple[int, int], ...]:
        lo, hi = body_of(role)
        other = "O" if role == "S" else "S"
        return tuple((a, b) for a, b in (opened[other], closed[other]) if b > a and lo <= a and b <= hi)

    return Marked(text, body_of("S"), (opened["S"][0], closed["S"][1]), body_of("O"), (opened["O"][0], closed["O"][1]),
                  skip_of("S"), skip_of("O"))


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


def add_marker_tokens(tokenizer, tokens: Sequence[str]):
    """Teach a built fast tokenizer the marker's special tokens (:func:`marker_tokens`), so none is ever split,
    as ``load_tokenizer`` does for a backbone's; returns the tokenizer.

    Example
    -------
    >>> tok = add_marker_tokens(tok, marker_tokens("entity_marker", []))  # doctest: +SKIP
    """
    if tokens:
        tokenizer.add_tokens(list(tokens), special_tokens=True)
    return tokenizer


def entity_types(datasets: Sequence) -> list[str]:
    """All entity types in the given datasets (subjects and objects), sorted."""
    return sorted({t for ds in datasets for ex in ds.examples for t in (ex.subj.type, ex.obj.type) if t})
