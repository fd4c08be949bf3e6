"""Tokenisation with entity positions from the fast tokenizer's offset mapping, cropping, and the cache.

Torch-free: features are NumPy arrays, so the cache is a plain ``.npz`` and can be shared by every fold,
variant and tuning trial that uses the same (data, tokenizer, marker, max_len).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._errors import ConfigError, StoreError, data_error
from ._markers import Marked, mark
from ._schema import Dataset
from ._textio import write_atomic

CACHE_VERSION = "tok-v1"
#: Columns of ``Features.ent``.
ENT_COLUMNS = ("subj_start", "subj_end", "subj_marker", "obj_start", "obj_end", "obj_marker")


@dataclass
class Features:
    """Token ids of every example plus entity token positions (all in the final, cropped sequence).

    ``ids`` is one flat int32 array; example i is ``ids[offsets[i]:offsets[i+1]]``.
    ``ent[i]`` holds ENT_COLUMNS: entity token ranges [start, end) and the start-marker token.
    """

    ids: np.ndarray
    offsets: np.ndarray
    ent: np.ndarray
    cropped: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def take(self, indices) -> "Features":
        """Features of the given rows, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = [self.row(i) for i in indices]
        ids = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)
        return Features(ids, _offsets([len(r) for r in rows]), self.ent[indices], self.cropped[indices])


def _offsets(lengths) -> np.ndarray:
    """Row start positions in a flat id array, plus the end: [0, l0, l0+l1, ...]."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def concat_features(*parts: Features) -> Features:
    """The rows of ``parts`` one after the other."""
    lengths = np.concatenate([p.lengths for p in parts])
    return Features(np.concatenate([p.ids for p in parts]).astype(np.int32), _offsets(lengths),
                    np.concatenate([p.ent for p in parts]), np.concatenate([p.cropped for p in parts]))


def special_template(tokenizer) -> tuple[list[int], list[int]]:
    """The special-token ids a tokenizer puts before and after a single sequence ([CLS] / [SEP], <s> / </s>)."""
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    for p in range(len(with_sp) - len(without) + 1):
        if with_sp[p : p + len(without)] == without:
            return list(with_sp[:p]), list(with_sp[p + len(without) :])
    raise ConfigError(f"cannot find the special-token template of tokenizer {type(tokenizer).__name__}")


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the full tokenizer definition (vocab, normaliser, added tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; entity positions "
                          "need the offset mapping of a fast (Rust) tokenizer")
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()


def _token_range(offsets: list, span: tuple[int, int]) -> tuple[int, int]:
    """Indices [first, last+1) of the tokens whose character span overlaps ``span``."""
    lo, hi = span
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < hi and b > lo]
    if not hits:
        return -1, -1
    return hits[0], hits[-1] + 1


def _start_token(offsets: list, pos: int, fallback: int) -> int:
    """The token that carries the character at ``pos``: the last one covering it, so a SentencePiece
    word-start piece ("▁") that shares the character's offsets is skipped."""
    hits = [i for i, (a, b) in enumerate(offsets) if a <= pos < b]
    return hits[-1] if hits else fallback


def encode(dataset: Dataset, tokenizer, marker: str, max_len: int) -> tuple[Features, int]:
    """Mark, tokenise and crop every example.

    Parameters
    ----------
    dataset: validated examples.
    tokenizer: a fast tokenizer that already knows the marker's special tokens.
    marker: one of kfold._markers.MARKERS.
    max_len: maximum sequence length including special tokens.

    Returns
    -------
    (features, number of cropped examples). A sentence longer than ``max_len`` is cropped to a
    window that keeps both marked entities whole; no row is ever dropped.

    Raises
    ------
    DataError when the two entities (with markers) do not fit in ``max_len`` together.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("entity positions need a fast tokenizer (offset mapping); got a slow one")
    prefix, suffix = special_template(tokenizer)
    budget = max_len - len(prefix) - len(suffix)
    if budget < 4:
        raise ConfigError(f"max_len {max_len} leaves {budget} tokens for the sentence; expected at least 4")
    marked: list[Marked] = [mark(ex, marker) for ex in dataset.examples]
    # verbose=False: rows longer than the model maximum are cropped below, the library warning would mislead
    enc = tokenizer([m.text for m in marked], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    all_ids, offsets_out, ents, cropped = [], [0], [], []
    for i, (m, ids, offs) in enumerate(zip(marked, enc["input_ids"], enc["offset_mapping"])):
        ex = dataset.examples[i]
        s_body, s_whole = _token_range(offs, m.subj_body), _token_range(offs, m.subj_whole)
        o_body, o_whole = _token_range(offs, m.obj_body), _token_range(offs, m.obj_whole)
        if min(s_body[0], o_body[0]) < 0:
            which = "subject" if s_body[0] < 0 else "object"
            raise data_error(dataset.path, ex.row, which, "<no tokens>", "an entity that the tokenizer turns into tokens")
        lo, hi = min(s_whole[0], o_whole[0]), max(s_whole[1], o_whole[1])
        start = 0
        was_cropped = len(ids) > budget
        if was_cropped:
            if hi - lo > budget:
                raise data_error(dataset.path, ex.row, "sentence", f"<entities {hi - lo} tokens apart>",
                                 f"both entities within max_len {max_len} ({budget} tokens without specials); raise --max-len")
            # centre the window on the entity region, then clamp it inside the sentence
            start = min(max(0, lo - (budget - (hi - lo)) // 2), len(ids) - budget)
            ids = ids[start : start + budget]
        shift = len(prefix) - start
        all_ids.append(np.asarray(prefix + list(ids) + suffix, dtype=np.int32))
        offsets_out.append(offsets_out[-1] + len(all_ids[-1]))
        s_mark = _start_token(offs, m.subj_whole[0], s_whole[0])
        o_mark = _start_token(offs, m.obj_whole[0], o_whole[0])
        ents.append((s_body[0] + shift, s_body[1] + shift, s_mark + shift,
                     o_body[0] + shift, o_body[1] + shift, o_mark + shift))
        cropped.append(was_cropped)
    feats = Features(np.concatenate(all_ids), np.asarray(offsets_out, dtype=np.int64),
                     np.asarray(ents, dtype=np.int32).reshape(-1, 6), np.asarray(cropped, dtype=bool))
    return feats, int(feats.cropped.sum())


def cache_key(dataset: Dataset, tokenizer, marker: str, max_len: int) -> str:
    """Key of the token cache: data content, tokenizer definition, marker, max_len, format version."""
    h = hashlib.sha256()
    for part in (CACHE_VERSION, dataset.content_hash(), tokenizer_fingerprint(tokenizer), marker, str(max_len)):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:20]


def encode_cached(dataset: Dataset, tokenizer, marker: str, max_len: int, cache_dir: str | Path | None) -> tuple[Features, int, bool]:
    """:func:`encode` through an on-disk cache; returns (features, cropped, cache_hit)."""
    if cache_dir is None:
        feats, n = encode(dataset, tokenizer, marker, max_len)
        return feats, n, False
    path = Path(cache_dir) / f"tokens-{cache_key(dataset, tokenizer, marker, max_len)}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = Features(z["ids"], z["offsets"], z["ent"], z["cropped"])
            if len(feats) == len(dataset):
                return feats, int(feats.cropped.sum()), True
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache entry is rebuilt below
    feats, n = encode(dataset, tokenizer, marker, max_len)

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=feats.ids, offsets=feats.offsets, ent=feats.ent, cropped=feats.cropped)

    try:
        write_atomic(path, _write)
    except StoreError:
        pass  # a read-only cache folder only costs speed
    return feats, n, False
