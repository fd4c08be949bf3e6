"""How well a backbone's tokenizer reads a data file's text: tokens per letter and the share of letters in unknown
tokens. An English WordPiece on Korean text (all-MiniLM-L6-v2: its normaliser splits each Hangul syllable into
jamo) makes about two tokens per letter; a multilingual SentencePiece about 0.85, English text on either about 0.45.
``kfold check-data`` and ``kfold auto`` say so when the chosen backbone reads the text badly, and name the
packaged backbone that reads it better."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

from kfold.core.errors import ConfigError

from ._tokenizer import BACKBONE_ALIASES, load_tokenizer

#: Rows looked at (the first ones): enough for a stable figure, quick on any file.
SAMPLE_ROWS = 500
#: More tokens than letters means the text is cut below its letters (jamo, bytes): read badly.
POOR_TOKENS_PER_LETTER = 1.0
#: Or more than this share of its letters in unknown tokens.
POOR_UNKNOWN_SHARE = 0.05


@dataclass(frozen=True)
class Reading:
    """Tokens per letter (letters: ``str.isalpha`` characters) and the share of letters inside unknown tokens."""

    tokens_per_letter: float
    unknown_share: float

    @property
    def poor(self) -> bool:
        """Whether the text is read badly (see POOR_TOKENS_PER_LETTER, POOR_UNKNOWN_SHARE)."""
        return self.tokens_per_letter > POOR_TOKENS_PER_LETTER or self.unknown_share > POOR_UNKNOWN_SHARE

    def describe(self) -> str:
        return (f"{self.tokens_per_letter:.2f} tokens per letter, {self.unknown_share * 100:.0f}% of letters in "
                "unknown tokens")


def reading(tokenizer, texts: Sequence[str], sample: int = SAMPLE_ROWS) -> Reading:
    """How ``tokenizer`` reads the first ``sample`` of ``texts`` (no special tokens).

    Example
    -------
    >>> reading(load_tokenizer("minilm", []), ["삼성전자는 1969년에 설립되었다"]).poor  # doctest: +SKIP
    True
    """
    texts = list(texts[:sample])
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    letters = tokens = unknown = 0
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
        letters += sum(c.isalpha() for c in text)
        tokens += len(ids)
        unknown += sum(c.isalpha() for i, (a, b) in zip(ids, offsets) if i == tokenizer.unk_token_id for c in text[a:b])
    return Reading(tokens / max(letters, 1), unknown / max(letters, 1))


def reading_notice(texts: Sequence[str], backbone: str, tokenizer, others: dict[str, Callable[[], object]]
                   ) -> tuple[str | None, str | None]:
    """(one line, the better backbone) when ``tokenizer`` (``backbone``'s) reads ``texts`` badly: the line names
    the backbone of ``others`` (name -> its tokenizer, or raises ConfigError saying how to install it) that reads
    them best, when one reads them well (else how to get the ones not installed). (None, None) when the text is
    read well."""
    mine = reading(tokenizer, texts)
    if not mine.poor:
        return None, None
    line = f"note: backbone {backbone} reads this text badly ({mine.describe()})"
    best: tuple[Reading, str] | None = None
    missing = []
    for name, load in others.items():
        if name == backbone:
            continue
        try:
            other = reading(load(), texts)
        except ConfigError as exc:  # an alias whose package is missing: say how to get it
            missing.append(str(exc).splitlines()[0])
            continue
        if not other.poor and (best is None or other.tokens_per_letter < best[0].tokens_per_letter):
            best = (other, name)
    if best is not None:
        return f"{line}; {best[1]} reads it with {best[0].describe()} (--backbone {best[1]})", best[1]
    if missing:
        return f"{line}; a packaged backbone may read it better: {'; '.join(missing)}", None
    return line, None


@functools.lru_cache(maxsize=8)
def _plain_tokenizer(backbone: str):
    """A backbone's tokenizer without marker tokens, loaded once per process (reading only tokenizes)."""
    return load_tokenizer(backbone, [])


def backbone_reading(texts: Sequence[str], backbone: str) -> tuple[str | None, str | None]:
    """:func:`reading_notice` for ``backbone`` against the packaged backbones (``BACKBONE_ALIASES``)."""
    others = {name: (lambda name=name: _plain_tokenizer(name)) for name in BACKBONE_ALIASES}
    return reading_notice(texts, backbone, _plain_tokenizer(backbone), others)
