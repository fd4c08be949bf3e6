"""The report's 95% intervals: a bootstrap with bias-corrected percentiles. Torch-free.

The resampling scheme of each metric (:func:`scheme_for`) was chosen by the coverage its intervals reach in a
simulation with a known truth (``kfold.report._coverage``, ``benchmarks/interval_coverage.py``):

- accuracy, micro-F1, macro-F1, SemEval's rule and log loss: a plain bootstrap over rows. Resampling within each
  gold label holds every label's count fixed, which leaves out the spread from how many rows of each label a sample
  holds: its 95% intervals of accuracy held the truth in 81.0% of replicates where two labels are predicted with
  very different accuracy (the plain bootstrap's: 93.3%).
- AUPRC: resampled within each gold label (as many rows of each label as the data has), so every resample keeps
  every label. A plain bootstrap loses a rare label in some resamples, and the mean over the labels present then
  jumps, so its interval could miss its own estimate (seen: AUPRC 5.03 [5.13, 7.20] on 200 rows of 42 labels).
  AUPRC needs probabilities, which the simulation does not draw: its coverage is not measured.

The interval is the bias-corrected percentile interval (BC, Efron 1981): where the resamples sit mostly above (or
below) the estimate, the percentiles are shifted by that bias. The same resamples give every run's interval and the
paired ``P(beats best)``.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

#: How the report and the README name the method.
INTERVAL_METHOD = ("bootstrap over rows (AUPRC: resampled within each gold label, so every resample keeps every "
                   "label), bias-corrected percentile 95% interval")


def scheme_for(metric: str) -> str:
    """The resampling scheme of a metric's interval: ``stratified`` for AUPRC, ``plain`` for every other metric
    (chosen by simulated coverage; see the module docstring)."""
    return "stratified" if metric == "auprc" else "plain"


def plain_weights(n: int, b: int, seed: int) -> np.ndarray:
    """[b, n] resampling counts of the plain bootstrap: n rows drawn with replacement.

    >>> plain_weights(5, 3, seed=0).sum(1).tolist()
    [5.0, 5.0, 5.0]
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)


def stratified_weights(y: np.ndarray, b: int, seed: int) -> np.ndarray:
    """[b, n] resampling counts: for each gold label, its rows drawn with replacement as many times as it has rows.

    >>> stratified_weights(np.array([0, 0, 1]), 4, seed=0)[:, 2].tolist()  # a label's only row is always drawn
    [1.0, 1.0, 1.0, 1.0]
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    weights = np.zeros((b, len(y)))
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        weights[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1.0 / len(rows)), size=b)
    return weights


def bc_interval(estimate: float, resampled: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The bias-corrected percentile interval of ``estimate`` from its bootstrap distribution ``resampled``.

    z0 = Phi^-1(share of resamples below the estimate, ties counted half); the interval is the resamples'
    percentiles at Phi(2 z0 -+ z), z the normal quantile of ``level``. With no bias (z0 = 0) it is the plain
    percentile interval; it holds the estimate whenever the estimate lies inside the resamples' central ``level``.
    """
    d = np.asarray(resampled, dtype=np.float64)
    b = len(d)
    share = (np.sum(d < estimate) + 0.5 * np.sum(d == estimate)) / b
    normal = NormalDist()
    z0 = normal.inv_cdf(min(max(share, 0.5 / b), 1 - 0.5 / b))
    z = normal.inv_cdf(0.5 + level / 2)
    lo, hi = np.percentile(d, [100 * normal.cdf(2 * z0 - z), 100 * normal.cdf(2 * z0 + z)])
    return float(lo), float(hi)
