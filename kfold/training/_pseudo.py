"""Pseudo-labels: which test rows a fold's training part takes from its teacher's predictions. Torch-free.

A fold's teacher is one that never saw the fold's validation rows (its fold-k model, or a blend's fit without fold
k: ``ensemble.blend_fits``); this module chooses rows from the teacher's probabilities of the test rows.
"""

from __future__ import annotations

import numpy as np

from kfold.core.errors import ConfigError


def pseudo_rows(probs: np.ndarray, threshold: float, cap: float) -> np.ndarray:
    """The test rows a fold takes: those whose teacher's top probability is at least ``threshold``, at most ``cap``
    of them (``--pseudo-max-share`` times the fold's real training rows, rounded down). When more pass the
    threshold, each label keeps its share of the rows that passed, by the teacher's predicted label (largest
    remainders, ties to the label with more rows, then the lower index), and takes its most confident rows first
    (ties: the lower row). Returns the chosen rows' indices, sorted.

    >>> p = np.array([[.95, .05], [.9, .1], [.2, .8], [.03, .97], [.6, .4]])
    >>> pseudo_rows(p, 0.8, 10).tolist(), pseudo_rows(p, 0.8, 2).tolist()
    ([0, 1, 2, 3], [0, 3])
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or not np.isfinite(probs).all():
        raise ConfigError(f"teacher probabilities of shape {probs.shape}: expected finite [rows, labels]")
    if not 0.0 < threshold <= 1.0 or cap < 0:
        raise ConfigError(f"pseudo threshold {threshold}, cap {cap}: expected 0 < threshold <= 1 and cap >= 0")
    cap = int(np.floor(cap))
    top, label = probs.max(1), probs.argmax(1)
    passed = np.flatnonzero(top >= threshold)
    if len(passed) <= cap:
        return passed
    counts = np.bincount(label[passed], minlength=probs.shape[1])
    exact = counts * cap / len(passed)
    quota = np.floor(exact).astype(np.int64)
    # the rows left go to the largest remainders (then the labels with more rows, then the lower label)
    order = np.lexsort((np.arange(len(counts)), -counts, -(exact - quota)))
    quota[order[:cap - int(quota.sum())]] += 1
    chosen = []
    for c in np.flatnonzero(quota):
        rows = passed[label[passed] == c]
        chosen.append(rows[np.lexsort((rows, -top[rows]))][:quota[c]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
