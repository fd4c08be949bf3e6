"""``kfold check-data``: every problem of a data file at once, what was repaired, and the distributions a user
needs to choose settings (labels, token lengths for a backbone and marker)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kfold.core.config import Config
from kfold.core.errors import DataProblems
from kfold.data import Dataset, data_notes, read_settings, with_skip_hint, write_lists

from ._reading import backbone_reading

#: Problem lines shown on the screen before "and N more" (--all shows every one).
SCREEN_LINES = 50


@dataclass
class TokenStats:
    """Token lengths (special tokens included, before cropping) and what ``max_len`` does to the rows."""

    lengths: np.ndarray
    max_len: int
    one_window: list[int]  # row positions cropped to one window
    two_windows: list[int]  # row positions split into two windows

    def lines(self, ds: Dataset, backbone: str, marker: str, limit: int | None) -> list[str]:
        q = np.percentile(self.lengths, [50, 95])
        over = int((self.lengths > self.max_len).sum())
        out = [f"tokens per row ({backbone}, {marker}): median {q[0]:.0f}, 95th percentile {q[1]:.0f}, "
               f"max {self.lengths.max()}; {over} of {len(ds)} rows longer than max_len {self.max_len} "
               f"({len(self.one_window)} cropped to one window, {len(self.two_windows)} two windows)"]
        for p in (self.two_windows if limit is None else self.two_windows[:limit]):
            ex = ds.examples[p]
            out.append(f"  {ds.path}: row {ex.row} (id {ex.id}): {self.lengths[p]} tokens, entities too far apart "
                       "for one window: one window around each entity")
        if limit is not None and len(self.two_windows) > limit:
            out.append(f"  and {len(self.two_windows) - limit} more two-window rows (--all lists every one)")
        return out


def label_lines(ds: Dataset) -> list[str]:
    """Counts per label (most common first) and the majority share."""
    counts = Counter(ex.label for ex in ds.examples if ex.label is not None)
    if not counts:
        return [f"labels: none ({ds.path} is a blind file)"]
    n = sum(counts.values())
    top, top_n = counts.most_common(1)[0]
    width = max(len(name) for name in ds.label_names)
    out = [f"labels: {len(counts)} of {len(ds.label_names)} used; majority '{top}' {top_n / n * 100:.2f}% "
           f"(the accuracy of always predicting it)"]
    for name in sorted(ds.label_names, key=lambda k: (-counts.get(k, 0), ds.label_names.index(k))):
        out.append(f"  {name:<{width}} {counts.get(name, 0):>6}  {counts.get(name, 0) / n * 100:6.2f}%")
    return out


def token_stats(ds: Dataset, cfg: Config) -> TokenStats:
    """Tokenise with the config's backbone, marker and max_len (no cache written); DataProblems when a row's
    entities cannot be kept."""
    from ._encode import ONE_WINDOW, TWO_WINDOWS, encode
    from ._markers import check_marker, entity_types, mark, marker_tokens
    from ._tokenizer import load_tokenizer

    check_marker(cfg.marker, ds.has_types, ds.path)
    tok = load_tokenizer(cfg.backbone, marker_tokens(cfg.marker, entity_types([ds])))
    texts = [mark(ex, cfg.marker).text for ex in ds.examples]
    specials = len(tok("a")["input_ids"]) - len(tok("a", add_special_tokens=False)["input_ids"])
    lengths = np.array([len(ids) + specials for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]])
    feats, _ = encode(ds, tok, cfg.marker, cfg.max_len, cfg.too_far)
    return TokenStats(lengths, cfg.max_len, np.flatnonzero(feats.crop == ONE_WINDOW).tolist(),
                      np.flatnonzero(feats.crop == TWO_WINDOWS).tolist())


def check_data(path: str | Path, cfg: Config, *, role: str = "train", workdir: str | Path = "runs",
               show_all: bool = False, tokens: bool = True, log: Callable[[str], None] = print) -> int:
    """Validate a data file and print what a user needs before training; returns 0.

    Prints the offsets repaired, the rows whose subject and object overlap and (``--bad-rows skip``) the rows left
    out, each listed in ``<workdir>/data/``; the label distribution and, with ``tokens``, the token lengths for
    ``cfg.backbone`` / ``cfg.marker`` / ``cfg.max_len`` and the rows that ``cfg.too_far`` splits (at most
    SCREEN_LINES lines per list unless ``show_all``). Nothing is written but those lists.

    Raises
    ------
    DataProblems listing every problem of the file (the CLI prints them under a summary and exits 2); for a
    training file its last line says how many rows ``--bad-rows skip`` would leave out.

    Example
    -------
    >>> check_data("train.tsv", Config(labels="label_type.pkl"))  # doctest: +SKIP
    0
    """
    from kfold.data import dataset_summary, read_dataset

    limit = None if show_all else SCREEN_LINES
    try:
        ds = read_dataset(path, cfg.labels or None, role=role, **read_settings(cfg))
    except DataProblems as exc:
        raise with_skip_hint(exc, workdir) from None
    stats = token_stats(ds, cfg) if tokens else None
    notes = iter(data_notes(ds, write_lists(ds, workdir)))
    text = {ex.row: ex.sentence for ex in ds.examples}
    for items, line in ((ds.repairs, lambda r: f"row {r.row} (id {r.id}), {r.field} '{r.text}': [{r.old[0]}, "
                                               f"{r.old[1]}] -> [{r.new[0]}, {r.new[1]}]"),
                        (ds.overlaps, lambda o: f"row {o.row} (id {o.id}), {o.kind}: subject '{text[o.row][slice(*o.subject)]}' "
                                                f"[{o.subject[0]}, {o.subject[1]}), object '{text[o.row][slice(*o.object)]}' "
                                                f"[{o.object[0]}, {o.object[1]})"),
                        (ds.skipped, lambda s: s.problem)):
        if items:  # the list's note (data_notes gives one per non-empty list, in this order), then its rows
            log(next(notes))
            for item in items[:limit]:
                log(f"  {line(item)}")
            if limit is not None and len(items) > limit:
                log(f"  and {len(items) - limit} more (--all lists every one)")
    log(dataset_summary(ds))
    for line in label_lines(ds):
        log(line)
    if stats is not None:
        for line in stats.lines(ds, cfg.backbone, cfg.marker, limit):
            log(line)
        notice, _ = backbone_reading([ex.sentence for ex in ds.examples], cfg.backbone)
        if notice:
            log(notice)
    skipped = len({s.row for s in ds.skipped})
    log(f"{path}: no problems" + (f" in the {len(ds)} rows kept ({skipped} left out by --bad-rows skip)" if skipped else ""))
    return 0
