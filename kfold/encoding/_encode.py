"""Tokenisation with entity positions from the fast tokenizer's offset mapping, cropping, and the cache.

Torch-free: features are NumPy arrays, so the cache is a plain ``.npz`` and can be shared by every fold,
variant and tuning trial that uses the same (data, tokenizer, marker, max_len).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kfold.core.errors import ConfigError, ProblemList, StoreError, unknown_name
from kfold.core.textio import write_atomic
from kfold.data import Dataset

from ._markers import Marked, mark

CACHE_VERSION = "tok-v5"
#: Columns of ``Features.ent``: each entity's token range and start-marker token, then the token ranges of the
#: other entity's markers inside it (overlapping spans; [0, 0) when there are none), which its pooling leaves out.
ENT_COLUMNS = ("subj_start", "subj_end", "subj_marker", "obj_start", "obj_end", "obj_marker",
               "subj_skip1_start", "subj_skip1_end", "subj_skip2_start", "subj_skip2_end",
               "obj_skip1_start", "obj_skip1_end", "obj_skip2_start", "obj_skip2_end")
#: ``Features.crop`` codes: the whole sentence, one window around both entities, one window around each.
WHOLE, ONE_WINDOW, TWO_WINDOWS = 0, 1, 2
#: ``too_far=``: what to do with a row whose entities lie further apart than max_len.
TOO_FAR = ("two-windows", "error")


@dataclass
class Features:
    """Token ids of every example plus entity token positions (all in the final, cropped sequence).

    ``ids`` is one flat int32 array; example i is ``ids[offsets[i]:offsets[i+1]]``.
    ``ent[i]`` holds ENT_COLUMNS: entity token ranges [start, end), the start-marker token, and the other entity's
    marker tokens inside each entity (two ranges per entity, [0, 0) when unused).
    ``crop[i]``: WHOLE, ONE_WINDOW (cropped around both entities) or TWO_WINDOWS (entities too far apart:
    a window around each, joined by the separator token). ``full[i]``: the row's length before cropping
    (special tokens included), for the length distribution in reports.
    """

    ids: np.ndarray
    offsets: np.ndarray
    ent: np.ndarray
    crop: np.ndarray
    full: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def cropped(self) -> np.ndarray:
        """Rows that lost tokens (one window or two)."""
        return self.crop != WHOLE

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def take(self, indices) -> "Features":
        """Features of the given rows, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = [self.row(i) for i in indices]
        ids = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)
        return Features(ids, _offsets([len(r) for r in rows]), self.ent[indices], self.crop[indices], self.full[indices])


def _offsets(lengths) -> np.ndarray:
    """Row start positions in a flat id array, plus the end: [0, l0, l0+l1, ...]."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def concat_features(*parts: Features) -> Features:
    """The rows of ``parts`` one after the other."""
    lengths = np.concatenate([p.lengths for p in parts])
    return Features(np.concatenate([p.ids for p in parts]).astype(np.int32), _offsets(lengths),
                    np.concatenate([p.ent for p in parts]), np.concatenate([p.crop for p in parts]),
                    np.concatenate([p.full for p in parts]))


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


def _stripped(text: str, a: int, b: int) -> tuple[int, int]:
    """The characters [a, b) of ``text`` without their leading and trailing whitespace."""
    piece = text[a:b]
    return a + len(piece) - len(piece.lstrip()), b - len(piece) + len(piece.rstrip())


def _tokens_within(offsets: list, span: tuple[int, int], text: str) -> tuple[int, int]:
    """Indices [first, last+1) of the tokens lying inside ``span`` (a marker's characters), or (0, 0). A token's
    whitespace does not count: SentencePiece's "▁#" spans the space before the marker too."""
    lo, hi = span
    inner = [_stripped(text, a, b) for a, b in offsets]
    hits = [i for i, (a, b) in enumerate(inner) if b > a and a >= lo and b <= hi]
    return (hits[0], hits[-1] + 1) if hits else (0, 0)


def _start_token(offsets: list, tokens: list[str], pos: int, fallback: int) -> int:
    """The token that carries the character at ``pos``: the first one covering it, skipping a bare SentencePiece
    word-start piece ("▁") that shares the character's offsets (WordPiece's jamo of one Hangul syllable share
    them too: the first is the syllable's start)."""
    hits = [i for i, (a, b) in enumerate(offsets) if a <= pos < b]
    return next((i for i in hits if tokens[i].strip("\u2581\u0120")), hits[-1] if hits else fallback)


def _joined_edges(m: Marked, offsets: list) -> set[int]:
    """The edges of ``m`` (:meth:`Marked.edges`) that one token straddles, with text of its own on both sides."""
    text = m.text
    return {q for q in m.edges() for a, b in offsets
            if a < q < b and text[a:q].strip() and text[q:b].strip()}


def _tokenize(tokenizer, marked: list[Marked]) -> tuple[list[Marked], list, list, list]:
    """Token ids, offsets and token strings of each marked text, with every entity and marker kept apart from the
    text beside it: where one token would hold characters from both sides of an edge (a SentencePiece piece such as
    "▁#1" or "▁(@" joining a marker to the word it touches, or a word the entity starts inside, like "YouTube"
    for the entity "Tube" without markers), that row alone is marked again with a space at that edge and
    tokenised again. Rows without such a token are tokenised exactly as their marked text reads."""
    # verbose=False: rows longer than the model maximum are cropped below, the library warning would mislead
    kwargs = dict(add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    enc = tokenizer([m.text for m in marked], **kwargs)
    ids, offs, tokens = list(enc["input_ids"]), list(enc["offset_mapping"]), [e.tokens for e in enc.encodings]
    joined = {i: edges for i, m in enumerate(marked) if (edges := _joined_edges(m, offs[i]))}
    if not joined:
        return marked, ids, offs, tokens
    marked = list(marked)
    for i, edges in joined.items():
        marked[i] = marked[i].spaced(edges)
    again = tokenizer([marked[i].text for i in joined], **kwargs)
    for n, i in enumerate(joined):
        ids[i], offs[i], tokens[i] = again["input_ids"][n], again["offset_mapping"][n], again.encodings[n].tokens
        if _joined_edges(marked[i], offs[i]):
            raise ConfigError(f"tokenizer {type(tokenizer).__name__} joins text across a space in {marked[i].text!r}; "
                              "entity positions need a tokenizer that splits at spaces")
    return marked, ids, offs, tokens


def encode(dataset: Dataset, tokenizer, marker: str, max_len: int, too_far: str = "two-windows") -> tuple[Features, int]:
    """Mark, tokenise and crop every example.

    Parameters
    ----------
    dataset: validated examples.
    tokenizer: a fast tokenizer that already knows the marker's special tokens.
    marker: one of kfold.core.config.MARKERS.
    max_len: maximum sequence length including special tokens.
    too_far: a row whose marked entities do not fit in one window of ``max_len`` becomes two windows, one
        centred on each entity, joined by the separator token (``two-windows``), or is a problem (``error``).

    Returns
    -------
    (features, number of rows that lost tokens). A sentence longer than ``max_len`` is cropped to a
    window that keeps both marked entities whole; no row is ever dropped.

    Entities and markers are kept apart from the text beside them: :func:`mark` separates a marker from its
    entity by a space, and where the tokenizer would still make one token of characters from both sides of an
    entity's edge or of a marker's outer side (XLM-R's SentencePiece has pieces such as "▁#1", "▁(@" and "&#";
    without markers, "YouTube" is one piece for the entity "Tube"), that row is tokenised with a space at that
    edge. So each entity's tokens spell exactly the entity and no token holds a marker and text; rows without
    such a token are tokenised exactly as marked.

    Raises
    ------
    DataProblems listing every row whose entities cannot be kept (no tokens; too far apart with
    ``too_far="error"``; the two marked entities alone longer than ``max_len``).

    Example
    -------
    >>> feats, n_cropped = encode(ds, tok, "entity_marker_punct", 128)  # doctest: +SKIP
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("entity positions need a fast tokenizer (offset mapping); got a slow one")
    if too_far not in TOO_FAR:
        raise unknown_name("too-far", too_far, TOO_FAR)
    prefix, suffix = special_template(tokenizer)
    budget = max_len - len(prefix) - len(suffix)
    if budget < 4:
        raise ConfigError(f"max_len {max_len} leaves {budget} tokens for the sentence; expected at least 4")
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else (suffix[0] if suffix else None)
    marked, rows, row_offsets, row_tokens = _tokenize(tokenizer, [mark(ex, marker) for ex in dataset.examples])
    problems = ProblemList(dataset.path)
    all_ids, offsets_out, ents, crops, full = [], [0], [], [], []
    for i, (m, ids, offs, tokens) in enumerate(zip(marked, rows, row_offsets, row_tokens)):
        ex = dataset.examples[i]
        s_body, s_whole = _token_range(offs, m.subj_body), _token_range(offs, m.subj_whole)
        o_body, o_whole = _token_range(offs, m.obj_body), _token_range(offs, m.obj_whole)
        if min(s_body[0], o_body[0]) < 0:
            which = "subject" if s_body[0] < 0 else "object"
            problems.add(ex.row, which, "<no tokens>", "an entity that the tokenizer turns into tokens", "entity without tokens")
            continue
        windows = _windows(len(ids), s_whole, o_whole, budget)
        if len(windows) == 2 and (too_far == "error" or sep is None):
            problems.add(ex.row, "sentence", f"<entities {max(s_whole[1], o_whole[1]) - min(s_whole[0], o_whole[0])} tokens apart>",
                         f"both entities within max_len {max_len} ({budget} tokens without specials); raise --max-len"
                         + (" or use --too-far two-windows" if sep is not None else ""), "entities too far apart")
            continue
        if not windows:
            problems.add(ex.row, "sentence", f"<marked entities of {s_whole[1] - s_whole[0]} + {o_whole[1] - o_whole[0]} tokens>",
                         f"entities that fit in max_len {max_len} together; raise --max-len", "entities too long")
            continue
        pieces, where = [], {}  # where: window start -> its position in the final sequence
        pos = len(prefix)
        for n, (a, b) in enumerate(windows):
            if n:
                pieces.append([sep])
                pos += 1
            where[a] = pos
            pieces.append(list(ids[a:b]))
            pos += b - a

        def place(t: int) -> int:
            a = max(w for w, _ in windows if w <= t)
            return where[a] + t - a

        all_ids.append(np.asarray(prefix + [t for piece in pieces for t in piece] + suffix, dtype=np.int32))
        offsets_out.append(offsets_out[-1] + len(all_ids[-1]))
        s_mark = _start_token(offs, tokens, m.subj_whole[0], s_whole[0])
        o_mark = _start_token(offs, tokens, m.obj_whole[0], o_whole[0])
        skips = []  # the other entity's marker tokens inside each entity (overlapping spans), two ranges each
        for chars in (m.subj_skip, m.obj_skip):
            for a, b in [_tokens_within(offs, c, m.text) for c in chars] + [(0, 0)] * (2 - len(chars)):
                skips += (place(a), place(b - 1) + 1) if b > a else (0, 0)
        ents.append((place(s_body[0]), place(s_body[1] - 1) + 1, place(s_mark),
                     place(o_body[0]), place(o_body[1] - 1) + 1, place(o_mark), *skips))
        crops.append(WHOLE if windows == [(0, len(ids))] else ONE_WINDOW if len(windows) == 1 else TWO_WINDOWS)
        full.append(len(ids) + len(prefix) + len(suffix))
    problems.raise_if_any()
    feats = Features(np.concatenate(all_ids) if all_ids else np.zeros(0, np.int32), np.asarray(offsets_out, dtype=np.int64),
                     np.asarray(ents, dtype=np.int32).reshape(-1, len(ENT_COLUMNS)), np.asarray(crops, dtype=np.int8),
                     np.asarray(full, dtype=np.int32))
    return feats, int(feats.cropped.sum())


def _windows(n: int, s_whole: tuple[int, int], o_whole: tuple[int, int], budget: int) -> list[tuple[int, int]]:
    """Token ranges [a, b) of a row of ``n`` tokens that fit ``budget`` and keep both marked entities.

    The whole row when it fits; else one window centred on the region from the first entity to the last;
    when that region is longer than the budget, two windows (budget - 1 tokens together, one for the
    separator), each centred on its entity and as wide as an even share of the context allows; [] when the
    two marked entities alone do not fit. The region being longer than the budget keeps the windows apart.
    """
    if n <= budget:
        return [(0, n)]
    lo, hi = min(s_whole[0], o_whole[0]), max(s_whole[1], o_whole[1])
    if hi - lo <= budget:
        # centre the window on the entity region, then clamp it inside the sentence
        start = min(max(0, lo - (budget - (hi - lo)) // 2), n - budget)
        return [(start, start + budget)]
    first, second = sorted((s_whole, o_whole))
    spare = budget - 1 - (first[1] - first[0]) - (second[1] - second[0])
    if spare < 0:
        return []
    out = []
    for (a, b), context in ((first, spare // 2), (second, spare - spare // 2)):
        width = b - a + context
        start = min(max(0, a - context // 2), n - width)
        out.append((start, start + width))
    return out


def cache_key(dataset: Dataset, tokenizer, marker: str, max_len: int, too_far: str = "two-windows") -> str:
    """Key of the token cache: data content, tokenizer definition, marker, max_len, too_far, format version."""
    h = hashlib.sha256()
    for part in (CACHE_VERSION, dataset.content_hash(), tokenizer_fingerprint(tokenizer), marker, str(max_len), too_far):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:20]


def encode_cached(dataset: Dataset, tokenizer, marker: str, max_len: int, cache_dir: str | Path | None,
                  too_far: str = "two-windows") -> tuple[Features, int, bool]:
    """:func:`encode` through an on-disk cache; returns (features, cropped, cache_hit)."""
    if cache_dir is None:
        feats, n = encode(dataset, tokenizer, marker, max_len, too_far)
        return feats, n, False
    path = Path(cache_dir) / f"tokens-{cache_key(dataset, tokenizer, marker, max_len, too_far)}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = Features(z["ids"], z["offsets"], z["ent"], z["crop"], z["full"])
            if len(feats) == len(dataset):
                return feats, int(feats.cropped.sum()), True
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache entry is rebuilt below
    feats, n = encode(dataset, tokenizer, marker, max_len, too_far)

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=feats.ids, offsets=feats.offsets, ent=feats.ent, crop=feats.crop, full=feats.full)

    try:
        write_atomic(path, _write)
    except StoreError:
        pass  # a read-only cache folder only costs speed
    return feats, n, False


def crop_note(feats: Features, max_len: int) -> str | None:
    """One log line on the rows that lost tokens to ``max_len`` (None when none did)."""
    one, two = int((feats.crop == ONE_WINDOW).sum()), int((feats.crop == TWO_WINDOWS).sum())
    parts = []
    if one:
        parts.append(f"cropped {one} row(s) longer than max_len {max_len} to a window that keeps both entities")
    if two:
        parts.append(f"{two} row(s) whose entities lie further apart than max_len {max_len} became two windows, "
                     "one around each entity (--too-far)")
    return "; ".join(parts) or None
