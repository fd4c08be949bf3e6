"""How often the report's intervals hold the truth, measured by simulation with a known truth. Torch-free.

Each replicate draws ``n`` rows as a classifier of known quality would label them: a gold label from ``prior``, a
predicted label from the gold label's row of ``truth`` (P(predicted | gold)). The replicate's interval is computed
as the report computes it, with one resampling scheme; it covers when it holds the population's score (the
metric of the expected confusion matrix, prior x truth). The share of replicates whose interval covers is the
interval's coverage: a 95% interval should cover about 95% of them.

Schemes (:data:`SCHEMES`): ``stratified`` resamples within each gold label, keeping every label's count (the
report's scheme before this measurement; now AUPRC's only); ``plain`` resamples rows, so label counts vary as they do between samples
of the population. Holding the counts fixed leaves out the spread that comes from how many rows of each label a
sample happens to hold, which matters when labels are predicted with very different accuracy.

Only metrics computed from the confusion matrix are simulated (accuracy, micro-F1, macro-F1, SemEval's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kfold.core.metrics import confusion, metric_fn

from ._intervals import bc_interval, plain_weights, stratified_weights

#: The resampling schemes compared.
SCHEMES = ("stratified", "plain")


def resample_weights(scheme: str, y: np.ndarray, b: int, seed: int) -> np.ndarray:
    """[b, n] resampling counts of ``scheme`` (see :data:`SCHEMES`) for rows with gold labels ``y``."""
    if scheme == "stratified":
        return stratified_weights(y, b, seed)
    if scheme == "plain":
        return plain_weights(len(y), b, seed)
    raise ValueError(f"unknown resampling scheme {scheme!r}; expected one of {list(SCHEMES)}")


@dataclass
class Coverage:
    """One (scheme, metric) cell of a simulation: the share of replicates whose interval held the truth."""

    scheme: str
    metric: str
    n: int
    replicates: int
    truth: float
    coverage: float
    mean_width: float
    too_low: float  # the share whose interval lay entirely below the truth
    too_high: float


def simulate_coverage(truth: np.ndarray, prior: np.ndarray, n: int, label_names, metrics, *,
                      schemes=SCHEMES, replicates: int = 400, resamples: int = 1000, seed: int = 0,
                      no_relation: str | None = None, level: float = 0.95) -> list[Coverage]:
    """Coverage of the report's ``level`` intervals (bias-corrected percentiles) of ``metrics`` under each scheme.

    ``truth`` [C, C]: P(predicted | gold), rows summing to 1; ``prior`` [C]: P(gold). Every scheme and metric sees
    the same replicates, and within a replicate the same resampled rows for every metric.

    >>> t = np.array([[0.9, 0.1], [0.3, 0.7]])
    >>> [c.scheme for c in simulate_coverage(t, np.array([0.5, 0.5]), 50, ["a", "b"], ["accuracy"], replicates=3,
    ...                                      resamples=50)]
    ['stratified', 'plain']
    """
    truth, prior = np.asarray(truth, np.float64), np.asarray(prior, np.float64)
    k = len(prior)
    fns = {m: metric_fn(m, label_names, no_relation) for m in metrics}
    missing = [m for m, fn in fns.items() if fn.from_cm is None]
    if missing:
        raise ValueError(f"metrics {missing} are not computed from a confusion matrix; simulate {list(metrics)} without them")
    population = {m: float(fn.from_cm(prior[:, None] * truth * 1e6)) for m, fn in fns.items()}
    rng = np.random.default_rng(seed)
    hits = {(s, m): [] for s in schemes for m in metrics}
    for r in range(replicates):
        y = rng.choice(k, size=n, p=prior)
        pred = (rng.random(n)[:, None] > np.cumsum(truth[y], axis=1)).sum(1).clip(max=k - 1)
        cm = confusion(y, pred, k)
        for s in schemes:
            boot = confusion(y, pred, k, resample_weights(s, y, resamples, seed * 100_003 + r))
            for m, fn in fns.items():
                lo, hi = bc_interval(float(fn.from_cm(cm)), fn.from_cm(boot), level)
                hits[(s, m)].append((lo, hi))
    out = []
    for (s, m), intervals in hits.items():
        lo, hi = np.array(intervals).T
        t = population[m]
        out.append(Coverage(s, m, n, replicates, t, float(np.mean((lo <= t) & (t <= hi))), float(np.mean(hi - lo)),
                            float(np.mean(hi < t)), float(np.mean(lo > t))))
    return out
