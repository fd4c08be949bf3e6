"""Metrics on label indices and probabilities (NumPy only; ensemble uses them without torch).

All scores are percentages (0-100), as leaderboards print them. Every hard-label metric is computed
from a (optionally weighted) confusion matrix, so the bootstrap in the report reuses the same code
with resampling weights instead of copies of the rows.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from .errors import ConfigError, unknown_name

METRICS = ("accuracy", "micro_f1", "macro_f1", "auprc", "semeval", "logloss")
#: Metrics where lower is better (every other metric is maximised).
LOWER_IS_BETTER = ("logloss",)
#: The direction suffix of a SemEval-style label, ``Cause-Effect(e1,e2)`` (entity swap inverts it).
DIRECTION = re.compile(r"\((e1,e2|e2,e1)\)$")
#: Names that mean "no relation" in the corpora we know; the first one present is used by default.
NO_RELATION_NAMES = ("관계_없음", "no_relation", "Other", "NA", "none")


def default_no_relation(label_names: Sequence[str]) -> str | None:
    """The no-relation label of a label set (first of NO_RELATION_NAMES present), or None."""
    for name in NO_RELATION_NAMES:
        if name in label_names:
            return name
    return None


def no_relation_index(label_names: Sequence[str], no_relation: str | None = None) -> int:
    """The column micro_f1 leaves out: ``no_relation`` when given, else the first of NO_RELATION_NAMES present.

    Raises ConfigError, never a silent fallback to accuracy: the official KLUE code raises too when the label set
    has no ``no_relation``.
    """
    names = list(label_names)
    if no_relation:
        if no_relation not in names:
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ConfigError(f"--no-relation '{no_relation}' is not one of the labels [{shown}]")
        return names.index(no_relation)
    found = default_no_relation(names)
    if found is None:
        raise ConfigError(f"micro_f1 leaves out the no-relation label, and these labels have none of "
                          f"{', '.join(NO_RELATION_NAMES)}: name it with --no-relation NAME (or choose another metric)")
    return names.index(found)


def has_no_relation(label_names: Sequence[str], no_relation: str | None = None) -> bool:
    """Whether micro_f1 is defined for this label set (see :func:`no_relation_index`)."""
    try:
        no_relation_index(label_names, no_relation)
    except ConfigError:
        return False
    return True


def auprc_labels(y: np.ndarray, num_labels: int) -> tuple[int, int]:
    """(labels present in the gold labels, all labels): AUPRC is the mean over the present ones. The official KLUE
    code averages over all labels, where an absent label has no precision-recall curve (README, Metrics)."""
    return int(len(np.unique(np.asarray(y)[np.asarray(y) >= 0]))), int(num_labels)


def confusion(y: np.ndarray, pred: np.ndarray, num_labels: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Confusion matrix (rows gold, columns predicted); ``weights`` [B, n] gives one matrix per row of weights."""
    codes = np.asarray(y, dtype=np.int64) * num_labels + np.asarray(pred, dtype=np.int64)
    if weights is None:
        return np.bincount(codes, minlength=num_labels * num_labels).reshape(num_labels, num_labels).astype(np.float64)
    return np.stack([np.bincount(codes, weights=w, minlength=num_labels * num_labels) for w in weights]).reshape(
        len(weights), num_labels, num_labels)


def precision_recall_f1(tp, n_pred, n_true) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elementwise precision, recall and F1 (fractions) from counts (0 where undefined)."""
    tp, n_pred, n_true = (np.asarray(a, dtype=np.float64) for a in (tp, n_pred, n_true))
    p = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    r = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)
    return p, r, np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)


def _f1(tp, n_pred, n_true):
    """Elementwise F1 from counts (0 where undefined)."""
    return precision_recall_f1(tp, n_pred, n_true)[2]


def accuracy_cm(cm: np.ndarray) -> np.ndarray:
    """Share of rows on the diagonal, in %."""
    total = cm.sum(axis=(-2, -1))
    return np.divide(np.trace(cm, axis1=-2, axis2=-1), total, out=np.zeros_like(total), where=total > 0) * 100.0


def micro_f1_cm(cm: np.ndarray, exclude: int | None) -> np.ndarray:
    """Micro-F1 over every label except ``exclude`` (KLUE's no-relation rule), in %.

    Gold rows and predictions of the excluded label count neither as gold nor as predicted.
    """
    keep = np.ones(cm.shape[-1], dtype=bool)
    if exclude is not None:
        keep[exclude] = False
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    return _f1((diag * keep).sum(-1), (cm.sum(-2) * keep).sum(-1), (cm.sum(-1) * keep).sum(-1)) * 100.0


def macro_f1_cm(cm: np.ndarray) -> np.ndarray:
    """Unweighted mean of per-label F1 over labels present in the gold or predicted labels, in %."""
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    n_pred, n_true = cm.sum(-2), cm.sum(-1)
    present = (n_pred + n_true) > 0
    f1 = _f1(diag, n_pred, n_true)
    return np.divide((f1 * present).sum(-1), present.sum(-1), out=np.zeros(f1.shape[:-1]), where=present.sum(-1) > 0) * 100.0


def semeval_cm(cm: np.ndarray, label_names: Sequence[str], other: str | None = "Other") -> np.ndarray:
    """SemEval-2010 Task 8 official score, in %.

    (9+1)-way with direction: for each relation type (direction stripped, ``Other`` excluded),
    P = exact-label hits / predictions of that type (either direction), R = hits / gold of that type;
    the score is the mean of per-type F1 over the types present in the gold labels (as the official
    scorer divides by the number of non-Other types in the answer key).
    """
    types = [DIRECTION.sub("", name) for name in label_names]
    uniq = [t for t in dict.fromkeys(types) if t != other]
    onehot = np.array([[t == u for u in uniq] for t in types], dtype=np.float64)  # label -> type
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    hits, n_pred, n_true = diag @ onehot, cm.sum(-2) @ onehot, cm.sum(-1) @ onehot
    present = n_true > 0
    f1 = _f1(hits, n_pred, n_true)
    return np.divide((f1 * present).sum(-1), present.sum(-1), out=np.zeros(f1.shape[:-1]), where=present.sum(-1) > 0) * 100.0


def auprc_weighted(y: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """KLUE AUPRC: mean over classes of the area under the one-vs-rest precision-recall curve, in %.

    The curve has a point per distinct score plus (recall 0, precision 1), integrated with trapezoids,
    as KLUE's sklearn ``precision_recall_curve`` + ``auc``. Classes with no positive row are left out.
    ``weights`` [B, n] gives one score per row of weights (bootstrap); None scores the rows once.

    Only the runs of tied scores that hold a positive row add area (elsewhere recall does not move), so
    per class the weights are summed in blocks between those runs instead of accumulated row by row.
    """
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(y)
    # rows x resamples, float32: half the memory traffic of the per-class gather; resample counts stay exact
    wt = np.ones((n, 1), np.float32) if weights is None else np.ascontiguousarray(np.asarray(weights, np.float32).T)
    areas, counted = np.zeros(wt.shape[1]), np.zeros(wt.shape[1])
    zero = np.zeros((1, wt.shape[1]))
    for c in range(probs.shape[1]):
        pos = y == c
        if not pos.any():
            continue
        order = np.argsort(-probs[:, c], kind="mergesort")
        scores, pos_sorted = probs[order, c], pos[order]
        first = np.r_[True, scores[1:] != scores[:-1]]  # first row of each run of tied scores
        starts = np.flatnonzero(first)
        runs = np.unique(np.cumsum(first)[pos_sorted] - 1)  # the runs holding a positive row
        a, b = starts[runs], np.r_[starts[1:], n][runs]  # rows [a, b) of each, in score order
        ws = wt[order]
        cuts = np.unique(np.r_[a, b])
        cuts = cuts[(cuts > 0) & (cuts < n)]
        # weight of the rows before x, for x in (0, cuts..., n)
        seen_at = np.vstack([zero, np.cumsum(np.add.reduceat(ws, np.r_[0, cuts], axis=0), axis=0, dtype=np.float64)])
        at = np.r_[0, cuts, n]
        hits = np.flatnonzero(pos_sorted)
        tp_at = np.vstack([zero, np.cumsum(ws[hits], axis=0, dtype=np.float64)])  # positive weight before the k-th hit
        tp_a, tp_b = tp_at[np.searchsorted(hits, a)], tp_at[np.searchsorted(hits, b)]
        seen_a, seen_b = seen_at[np.searchsorted(at, a)], seen_at[np.searchsorted(at, b)]
        total = tp_at[-1]
        prec_a = np.divide(tp_a, seen_a, out=np.ones_like(tp_a), where=seen_a > 0)
        prec_b = np.divide(tp_b, seen_b, out=np.ones_like(tp_b), where=seen_b > 0)
        area = np.sum((tp_b - tp_a) * (prec_a + prec_b) / 2.0, axis=0) / np.where(total > 0, total, 1.0)
        areas += np.where(total > 0, area, 0.0)
        counted += total > 0
    return np.divide(areas, counted, out=np.zeros_like(areas), where=counted > 0) * 100.0


def logloss_weighted(y: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean negative log-likelihood of the gold labels (natural log; not a percentage)."""
    p = np.asarray(probs, dtype=np.float64)
    nll = -np.log(np.clip(p[np.arange(len(y)), np.asarray(y)], 1e-12, None))
    w = np.ones((1, len(y))) if weights is None else np.asarray(weights, dtype=np.float64)
    return (w @ nll) / w.sum(axis=1)


def better(metric: str, a: float, b: float) -> bool:
    """True when score ``a`` is strictly better than ``b`` under ``metric``."""
    return a < b if metric in LOWER_IS_BETTER else a > b


def sign(metric: str) -> float:
    """+1 for metrics to maximise, -1 for those to minimise (multiply to compare as 'higher is better')."""
    return -1.0 if metric in LOWER_IS_BETTER else 1.0


def majority_accuracy(y: np.ndarray) -> float:
    """Accuracy in percent of always predicting the most common gold label (the floor a model must beat)."""
    y = np.asarray(y)
    return float(np.mean(y == np.bincount(y).argmax()) * 100)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def metric_fn(metric: str, label_names: Sequence[str], no_relation: str | None = None
              ) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray | float]:
    """A function ``(y, probs, weights=None)`` for a named metric: a float, or one score per weight row.

    Its attribute ``from_cm`` scores a (stack of) confusion matrices for the metrics that only need one (None for
    auprc and logloss), so that callers scoring several metrics build the matrices once.
    ``no_relation`` is the label micro_f1 leaves out (default: the first of 관계_없음 / no_relation /
    Other / NA present; ConfigError for micro_f1 when there is none) and the type semeval leaves out.
    """
    if metric not in METRICS:
        raise unknown_name("metric", metric, METRICS)
    names = list(label_names)
    k = len(names)
    nr = no_relation or default_no_relation(names)
    nr_idx = no_relation_index(names, no_relation) if metric == "micro_f1" else None  # ConfigError when undefined
    from_cm = {
        "accuracy": accuracy_cm,
        "micro_f1": lambda cm: micro_f1_cm(cm, nr_idx),
        "macro_f1": macro_f1_cm,
        "semeval": lambda cm: semeval_cm(cm, names, nr if nr is not None else "Other"),
    }

    def fn(y, probs, weights=None):
        if metric == "auprc":
            out = auprc_weighted(y, probs, weights)
        elif metric == "logloss":
            out = logloss_weighted(y, probs, weights)
        else:
            out = from_cm[metric](confusion(y, np.asarray(probs).argmax(1), k, weights))
        return float(np.asarray(out).reshape(-1)[0]) if weights is None else out

    fn.from_cm = from_cm.get(metric)
    return fn


def score(metric: str, y: np.ndarray, probs: np.ndarray, label_names: Sequence[str], no_relation: str | None = None) -> float:
    """Score probabilities with a named metric (only argmax matters, except for auprc).

    Parameters
    ----------
    metric: one of METRICS. y: gold label indices. probs: [n, C] probabilities (logits are fine except
        for auprc and logloss, which need probabilities).
    label_names: names in column order. no_relation: see :func:`metric_fn`.

    Example
    -------
    >>> score("accuracy", np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), ["a", "b"])
    50.0
    """
    return metric_fn(metric, label_names, no_relation)(np.asarray(y), np.asarray(probs))


def has_directions(label_names: Sequence[str]) -> bool:
    """True when labels look like SemEval's ``Type(e1,e2)``."""
    return any(DIRECTION.search(n) for n in label_names)


def metrics_for(label_names: Sequence[str], no_relation: str | None = None) -> list[str]:
    """The metrics defined for a label set: semeval only when the labels carry (e1,e2) directions, micro_f1 only
    when a no-relation label is known (a column left out, never accuracy printed under its name)."""
    return [m for m in METRICS if (m != "semeval" or has_directions(label_names))
            and (m != "micro_f1" or has_no_relation(label_names, no_relation))]


def all_scores(y: np.ndarray, probs: np.ndarray, label_names: Sequence[str], no_relation: str | None = None) -> dict[str, float]:
    """Every metric of :func:`metrics_for` the label set."""
    return {m: score(m, y, probs, label_names, no_relation) for m in metrics_for(label_names, no_relation)}


def metric_name(metric: str, labels: tuple[int, int] | None = None) -> str:
    """How a metric is named where its numbers are printed: AUPRC says over how many labels it was taken
    (``auprc (over 28/30 labels)``; ``labels`` from :func:`auprc_labels`)."""
    return f"auprc (over {labels[0]}/{labels[1]} labels)" if metric == "auprc" and labels else metric


def format_scores(scores: dict[str, float], auprc_over: tuple[int, int] | None = None) -> str:
    """``accuracy 81.33 micro_f1 86.72 ... auprc 94.76 (over 7/7 labels) ...``: the one-line form of a score dict
    in logs; ``auprc_over`` is :func:`auprc_labels` of the rows scored."""
    return " ".join(f"{k} {v:.2f}" + (f" (over {auprc_over[0]}/{auprc_over[1]} labels)" if k == "auprc" and auprc_over
                                       else "") for k, v in scores.items())
