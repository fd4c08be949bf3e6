"""Pseudo-labels: which test rows each part's training part takes from its teachers' predictions. Torch-free.

A fold's teacher is one that never saw the fold's validation rows (its fold-k model, or a blend's fit without fold
k: ``ensemble.blend_fits``); the refit's is the teachers' full-data prediction. This module chooses rows from the
teachers' probabilities of the test rows (:func:`pseudo_rows`) and makes every part's choice once, in the driver
(:func:`pseudo_labels`), so the parts only append the rows they are given to their training part.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from kfold.core.config import Config
from kfold.core.errors import ConfigError
from kfold.core.store import REFIT
from kfold.core.teachers import Teachers, positions


@dataclass
class PseudoLabels:
    """Every part's pseudo rows: ``rows[part]`` (indices into the student's test rows) and ``probs[part]`` (the
    teachers' probabilities of those rows, float32); the run's record of them in ``record``."""

    targets: str
    weight: float
    rows: dict = field(default_factory=dict)
    probs: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)

    def part(self, part) -> tuple[np.ndarray, np.ndarray] | None:
        """The rows and probabilities of one part (None when it takes none)."""
        rows = self.rows.get(part)
        return None if rows is None or not len(rows) else (rows, self.probs[part])


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


def pseudo_labels(cfg: Config, teachers: Teachers, fold_map_hash: str, folds: np.ndarray,
                  label_names: tuple[str, ...], test_ids, test_y: np.ndarray | None = None,
                  test_hash: str = "") -> PseudoLabels:
    """Choose every part's pseudo rows: fold k's from ``teachers.fold_probs[k]`` (``--pseudo-folds naive``: from
    the full-data ``full_probs``, as every fold's), capped at ``pseudo_max_share`` x the fold's real training rows;
    with ``cfg.refit`` the refit's from ``full_probs``, capped by all rows. ``folds``: the fold of every training
    row; ``test_y``: the test file's gold labels when it has them (only recorded: the pseudo rows' accuracy, never
    used to choose); ``test_hash``: the student's test file's content hash.

    Raises ConfigError in one line when the teachers were trained with another fold map, other label names, another
    test file (other ids, or another recorded content hash), or lack a fold's probabilities.
    """
    if teachers.fold_map_hash != fold_map_hash:
        raise ConfigError(f"--pseudo-from {', '.join(teachers.sources)}: trained with fold map "
                          f"{teachers.fold_map_hash[:12]}, the student's is {fold_map_hash[:12]}; a teacher of other "
                          "folds saw this student's validation rows (use the same --folds, --fold-seed and data)")
    if tuple(teachers.label_names) != tuple(label_names):
        raise ConfigError(f"--pseudo-from {', '.join(teachers.sources)}: label names {list(teachers.label_names)[:4]}..., "
                          f"the student's are {list(label_names)[:4]}...")
    if teachers.test_hash and test_hash and teachers.test_hash != test_hash:
        raise ConfigError(f"--pseudo-from {', '.join(teachers.sources)}: the teachers predicted another test file "
                          f"(content hash {teachers.test_hash[:12]}, the student's --test is {test_hash[:12]})")
    k = int(folds.max()) + 1
    missing = [f for f in range(k) if f not in teachers.fold_probs]
    if missing:
        raise ConfigError(f"--pseudo-from {', '.join(teachers.sources)}: no test probabilities of fold(s) {missing}")
    order = positions(teachers.test_ids, np.asarray(test_ids), f"--pseudo-from {', '.join(teachers.sources)}: "
                                                                "against the student's --test")
    out = PseudoLabels(cfg.pseudo_targets, cfg.pseudo_weight)
    parts = {f: (teachers.full_probs if cfg.pseudo_folds == "naive" else teachers.fold_probs[f],
                 int((folds != f).sum())) for f in range(k)}
    if cfg.refit:
        parts[REFIT] = (teachers.full_probs, len(folds))
    per_part = {}
    for part, (probs, n_real) in parts.items():
        probs = np.asarray(probs, dtype=np.float64)[order]
        rows = pseudo_rows(probs, cfg.pseudo_threshold, cfg.pseudo_max_share * n_real)
        out.rows[part], out.probs[part] = rows, probs[rows].astype(np.float32)
        label = probs[rows].argmax(1)
        per_part["refit" if part == REFIT else str(part)] = {
            "rows": int(len(rows)), "real_rows": n_real,
            "per_label": {label_names[c]: n for c, n in sorted(Counter(label.tolist()).items())},
            "mean_top_probability": round(float(probs[rows].max(1).mean()), 4) if len(rows) else None,
            **({"accuracy_on_test_labels": round(float((label == test_y[rows]).mean()), 4) if len(rows) else None}
               if test_y is not None else {}),
        }
    out.record = {"teachers": list(teachers.sources), "digest": teachers.digest, "folds": cfg.pseudo_folds,
                  "threshold": cfg.pseudo_threshold, "max_share": cfg.pseudo_max_share, "weight": cfg.pseudo_weight,
                  "targets": cfg.pseudo_targets, "parts": per_part}
    return out
