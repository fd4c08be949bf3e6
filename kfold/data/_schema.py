"""The one in-memory schema every reader produces. Torch-free.

Offsets are character offsets into ``sentence`` with an EXCLUSIVE end (Python slicing):
``sentence[span.start:span.end] == span.text``. Readers of formats with inclusive ends convert.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np


@dataclass(frozen=True)
class Span:
    """An entity mention: character offsets [start, end) and an optional type (PER, ORG, ...)."""

    start: int
    end: int
    type: str | None = None


@dataclass(frozen=True)
class Example:
    """One relation instance: subject (entity 1) and object (entity 2) in a sentence.

    ``label`` is a label name, or None for a blind test row. ``row`` is where it was read
    (1-based line or item number) so later errors can point at the file.
    """

    id: str
    sentence: str
    subj: Span
    obj: Span
    label: str | None = None
    row: int = 0

    @property
    def subj_text(self) -> str:
        return self.sentence[self.subj.start : self.subj.end]

    @property
    def obj_text(self) -> str:
        return self.sentence[self.obj.start : self.obj.end]


class Repair(NamedTuple):
    """An entity whose offsets a reader moved to where its text is; offsets in the file's own end convention."""

    row: int
    id: str
    field: str  # "subject" or "object"
    text: str
    old: tuple[int, int]
    new: tuple[int, int]


class Overlap(NamedTuple):
    """A row whose subject and object spans share characters (exclusive ends): ``nested`` (one inside the other),
    ``crossing`` (each has characters the other lacks) or ``identical``. Markers are inserted at both spans'
    positions (kfold.encoding's ``mark``); such rows are listed, not refused (``--overlap markers``)."""

    row: int
    id: str
    subject: tuple[int, int]
    object: tuple[int, int]
    kind: str


class Skipped(NamedTuple):
    """A training row left out by ``--bad-rows skip``: where, the field and the problem that could not be repaired."""

    row: int
    id: str
    field: str
    problem: str
    kind: str


def overlap_kind(subj: Span, obj: Span) -> str | None:
    """``identical``, ``nested``, ``crossing``, or None when the spans share no character."""
    if not (subj.start < obj.end and obj.start < subj.end):
        return None
    if (subj.start, subj.end) == (obj.start, obj.end):
        return "identical"
    inside = (subj.start <= obj.start and obj.end <= subj.end) or (obj.start <= subj.start and subj.end <= obj.end)
    return "nested" if inside else "crossing"


@dataclass
class Dataset:
    """Examples read from one file, with the label names that index the logit columns.

    ``repairs``: the entity offsets the reader repaired (see kfold.data._validate); the examples hold the
    repaired offsets, so the content hash, fold map and run identity are those of the repaired data.
    ``overlaps``: the rows whose subject and object spans overlap (kept, marked at their positions).
    ``skipped``: training rows left out by ``--bad-rows skip`` (not among the examples, so not in the hash).
    """

    path: str
    examples: list[Example]
    label_names: tuple[str, ...]
    repairs: list[Repair] = field(default_factory=list)
    overlaps: list[Overlap] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def ids(self) -> np.ndarray:
        return np.array([ex.id for ex in self.examples], dtype=str)

    @property
    def labelled(self) -> bool:
        return bool(self.examples) and all(ex.label is not None for ex in self.examples)

    @property
    def has_types(self) -> bool:
        return bool(self.examples) and all(ex.subj.type and ex.obj.type for ex in self.examples)

    @property
    def y(self) -> np.ndarray:
        """Label indices (int64); -1 for blind rows."""
        index = {name: i for i, name in enumerate(self.label_names)}
        return np.array([index[ex.label] if ex.label is not None else -1 for ex in self.examples], dtype=np.int64)

    def content_hash(self) -> str:
        """SHA-256 over ids, sentences, spans, types and labels: changes when the data does."""
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(
                "\x1f".join(
                    map(str, (ex.id, ex.sentence, ex.subj.start, ex.subj.end, ex.subj.type,
                              ex.obj.start, ex.obj.end, ex.obj.type, ex.label))
                ).encode("utf-8")
            )
            h.update(b"\x1e")
        h.update("\x1f".join(self.label_names).encode("utf-8"))
        return h.hexdigest()

    def subset(self, indices: Sequence[int]) -> "Dataset":
        """A Dataset of the given rows (same label names)."""
        return Dataset(self.path, [self.examples[i] for i in indices], self.label_names)
