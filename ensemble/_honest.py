"""Honest OOF scores for blends: nested cross-validation over the fold map. Torch-free.

A blender that learns (weights, temperatures, a stacker) scores itself optimistically on the rows it
was fit on. The honest score fits it on k-1 folds of the fold map and predicts the held-out fold, for
every fold, then scores the assembled predictions: every row is predicted by a blender that never saw it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.base import clone

from kfold.core.metrics import auprc_labels, metric_fn, metric_name, sign, softmax

from ._blenders import Blender


def fold_fits(blender: Blender, logits: np.ndarray, y: np.ndarray, folds: np.ndarray) -> dict[int, Blender]:
    """For every fold of the fold map, a copy of ``blender`` fit on the other folds' OOF rows: the blend that never
    saw that fold (what the honest score predicts it with, and what a per-fold use of the blend needs)."""
    return {int(f): clone(blender).fit(logits[:, folds != f], y[folds != f]) for f in np.unique(folds)}


def honest_oof(blender: Blender, logits: np.ndarray, y: np.ndarray, folds: np.ndarray,
               fits: dict[int, Blender] | None = None) -> np.ndarray:
    """Blend probabilities for every OOF row, each from a copy of ``blender`` fit on the other folds (``fits``:
    those copies, when :func:`fold_fits` made them already).

    Example
    -------
    >>> probs = honest_oof(WeightedBlend(), members.oof, members.y, members.folds)  # doctest: +SKIP
    """
    fits = fold_fits(blender, logits, y, folds) if fits is None else fits
    out = np.zeros((logits.shape[1], logits.shape[2]))
    for f, model in fits.items():
        held = folds == f
        out[held] = model.predict_proba(logits[:, held])
    return out


@dataclass
class BlendScores:
    """Member scores and the blend's honest and in-sample OOF scores under one metric."""

    metric: str
    members: dict[str, float]
    honest: float
    in_sample: float
    weights: dict[str, float]
    auprc_over: tuple[int, int] | None = None  # labels present in the OOF gold labels / all labels
    @property
    def best_member(self) -> tuple[str, float]:
        name = max(self.members, key=self.members.get)
        return name, self.members[name]

    @property
    def gain(self) -> float:
        return self.honest - self.best_member[1]

    def lines(self) -> list[str]:
        """A readable report."""
        width = max(len(n) for n in self.members)
        shown = metric_name(self.metric, self.auprc_over)
        out = [f"{'member':<{width}}  OOF {shown:<9} weight"]
        for name, s in sorted(self.members.items(), key=lambda kv: -kv[1]):
            out.append(f"{name:<{width}}  {s:>13.2f} {self.weights.get(name, 0.0):>7.3f}")
        best_name, best = self.best_member
        out.append(f"blend honest OOF {shown} (nested CV over the fold map): {self.honest:.2f}  "
                   f"(in-sample {self.in_sample:.2f}); best member {best_name} {best:.2f}; gain {self.gain:+.2f}")
        return out


def score_blend(blender: Blender, names: list[str], logits: np.ndarray, y: np.ndarray, folds: np.ndarray,
                metric: str, label_names, no_relation=None) -> tuple[Blender, BlendScores, np.ndarray]:
    """Fit ``blender`` on all OOF rows, score it honestly and in-sample; returns (fitted, scores, honest probs)."""
    result = _scored("", blender, names, logits, y, folds, metric, label_names, no_relation)
    return result.fitted, result.scores, result.honest_probs


def _scored(method: str, blender: Blender, names: list[str], logits: np.ndarray, y: np.ndarray, folds: np.ndarray,
            metric: str, label_names, no_relation=None) -> "MethodResult":
    t0 = time.perf_counter()
    fn = metric_fn(metric, label_names, no_relation)
    members = {n: fn(y, softmax(z)) for n, z in zip(names, logits)}
    fits = fold_fits(blender, logits, y, folds)
    honest_probs = honest_oof(blender, logits, y, folds, fits)
    fitted = clone(blender).fit(logits, y)
    scores = BlendScores(metric, members, fn(y, honest_probs), fn(y, fitted.predict_proba(logits)),
                         dict(zip(names, map(float, fitted.member_weights()))), auprc_labels(y, len(label_names)))
    return MethodResult(method, fitted, scores, time.perf_counter() - t0, honest_probs, fits)


#: Blend methods from the fewest learned parameters to the most; a simpler method wins a near-tie.
SIMPLICITY = ("soft", "hard", "rank", "weighted", "caruana", "stack")
#: How close (in metric points) an honest score must be to the best for a simpler method to win.
TIE = 0.05


@dataclass
class MethodResult:
    """One method's blend of the members: the fitted blender, its scores and how long scoring took."""

    method: str
    fitted: Blender
    scores: BlendScores
    seconds: float
    honest_probs: np.ndarray  # every OOF row predicted by a copy fit on the other folds
    fold_fits: dict[int, Blender] = field(default_factory=dict)  # those copies, by the fold each left out


def compare_methods(make: Callable[[str], Blender], methods: list[str], names: list[str], logits: np.ndarray,
                    y: np.ndarray, folds: np.ndarray, metric: str, label_names, no_relation=None) -> list[MethodResult]:
    """Fit and honestly score each method (``make(method)`` builds its blender), in the order given."""
    return [_scored(method, make(method), names, logits, y, folds, metric, label_names, no_relation)
            for method in methods]


def choose_method(honest: dict[str, float], metric: str, tie: float = TIE) -> str:
    """The method with the best honest score; among those within ``tie`` of it, the simplest (SIMPLICITY).

    >>> choose_method({"soft": 86.50, "stack": 86.54, "weighted": 86.70}, "semeval")
    'weighted'
    >>> choose_method({"soft": 86.50, "stack": 86.54}, "semeval")
    'soft'
    """
    s = sign(metric)
    best = max(s * v for v in honest.values())
    near = [m for m, v in honest.items() if s * v >= best - tie]
    return min(near, key=lambda m: SIMPLICITY.index(m) if m in SIMPLICITY else len(SIMPLICITY))
