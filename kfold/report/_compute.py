"""The numbers behind the HTML report, computed once from the run store (NumPy only; no drawing here).

Each function returns a small dataclass that the drawing functions (``kfold.report._draw``) and the page
(``kfold.report._html``) only read, so a number on the page is never computed twice.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kfold.core.metrics import confusion, precision_recall_f1, softmax
from kfold.core.store import Predictions, RunDir, load_predictions
from kfold.core.textio import read_json


@dataclass
class LabelScore:
    """Precision, recall and F1 (in %) of one label, and how many rows carry it."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


def per_label(y: np.ndarray, pred: np.ndarray, label_names) -> list[LabelScore]:
    """Scores per label from gold and predicted indices, sorted by F1 (worst first)."""
    cm = confusion(y, pred, len(label_names))
    n_true = cm.sum(1)
    p, r, f = precision_recall_f1(np.diag(cm), cm.sum(0), n_true)
    rows = [LabelScore(name, p[i] * 100, r[i] * 100, f[i] * 100, int(n_true[i])) for i, name in enumerate(label_names)]
    return sorted(rows, key=lambda s: (s.f1, -s.support))


@dataclass
class Confusions:
    """The row-normalised confusion matrix (gold rows, predicted columns) with labels ordered by frequency, and
    the largest off-diagonal cells."""

    labels: list[str]
    share: np.ndarray  # [C, C] row-normalised, in the order of ``labels``
    top: list[tuple[str, str, int, float]]  # (gold, predicted, rows, % of the gold label's rows)


def confusions(y: np.ndarray, pred: np.ndarray, label_names, top: int = 15) -> Confusions:
    cm = confusion(y, pred, len(label_names))
    order = np.argsort(-cm.sum(1), kind="stable")
    counts = cm[np.ix_(order, order)]
    totals = counts.sum(1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    cells = [(int(counts[i, j]), i, j) for i in range(len(order)) for j in range(len(order)) if i != j and counts[i, j]]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    names = [label_names[k] for k in order]
    return Confusions(names, share, [(names[i], names[j], n, share[i, j] * 100) for n, i, j in cells[:top]])


@dataclass
class Curve:
    """One fold's training curve: loss per epoch and the validation metric where it was scored."""

    fold: int
    epochs: list[int]
    loss: list[float]
    metric: list[float | None]


def training_curves(run: RunDir, metric: str) -> list[Curve]:
    """Every complete fold's curve, from its completion record."""
    out = []
    k = int(run.read_config()["config"].get("folds", 0))
    for fold in range(k):
        record = run.fold_record(fold)
        if record is None:
            continue
        hist = [h for h in record.get("history", []) if isinstance(h.get("epoch"), int)]
        out.append(Curve(fold, [h["epoch"] for h in hist], [h.get("train_loss", float("nan")) for h in hist],
                         [h.get(metric) for h in hist]))
    return out


@dataclass
class Suspect:
    """A training row whose OOF prediction confidently contradicts its label."""

    id: str
    given: str
    predicted: str
    p_predicted: float
    p_given: float


def confident_suspects(y: np.ndarray, probs: np.ndarray, ids, label_names) -> list[Suspect]:
    """Likely label errors by confident learning (Northcutt et al. 2021; cleanlab's confident joint, calibrated,
    pruned by noise rate), with per-label thresholds rather than one fixed probability.

    Each label j gets the threshold t_j = the mean predicted probability of j over the rows labelled j. A row's
    confident label is the most probable of the labels whose probability reaches their threshold; counting
    rows by (given label, confident label) gives the confident joint, whose rows are scaled to the label counts
    (rows with no confident label are not lost to the estimate). For every given label i and other label j, that
    many rows labelled i are flagged: those with the largest margin p_j - p_i. Returned most suspicious first
    (lowest probability of the given label).
    """
    probs = np.asarray(probs, dtype=np.float64)
    n, c = probs.shape
    thresholds = np.full(c, np.inf)
    for j in range(c):
        if (y == j).any():
            thresholds[j] = probs[y == j, j].mean()
    above = probs >= thresholds[None, :]
    confident = np.where(above, probs, -1.0).argmax(1)
    counted = above.any(1)
    joint = confusion(y[counted], confident[counted], c)
    per_label = np.bincount(y, minlength=c).astype(np.float64)
    calibrated = np.divide(joint * per_label[:, None], joint.sum(1, keepdims=True),
                           out=np.zeros_like(joint), where=joint.sum(1, keepdims=True) > 0)
    suggested, margin = np.full(n, -1), np.full(n, -np.inf)
    for i in range(c):
        rows = np.flatnonzero(y == i)
        for j in range(c):
            k = int(round(calibrated[i, j])) if j != i else 0
            if k <= 0:
                continue
            gap = probs[rows, j] - probs[rows, i]
            top = rows[np.argsort(-gap, kind="stable")[:k]]
            better = (probs[top, j] - probs[top, i]) > margin[top]
            suggested[top[better]], margin[top[better]] = j, (probs[top, j] - probs[top, i])[better]
    flagged = np.flatnonzero((suggested >= 0) & (margin > 0))
    out = [Suspect(str(ids[r]), label_names[y[r]], label_names[suggested[r]], float(probs[r, suggested[r]]),
                   float(probs[r, y[r]])) for r in flagged]
    return sorted(out, key=lambda s: (s.p_given, -s.p_predicted))


def suspects_csv(suspects: list[Suspect], sentences: dict[str, str] | None = None) -> str:
    """Every suspect as CSV: id, given and predicted label, both probabilities, the marked sentence."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "given_label", "predicted_label", "p_predicted", "p_given", "sentence"])
    for s in suspects:
        writer.writerow([s.id, s.given, s.predicted, f"{s.p_predicted:.4f}", f"{s.p_given:.4f}",
                         (sentences or {}).get(s.id, "")])
    return buf.getvalue()


@dataclass
class BlendInfo:
    """A leaderboard file written in this workdir, from its manifest."""

    file: str
    method: str
    metric: str
    honest: float
    best_member: str
    best_member_score: float
    weights: dict[str, float]
    test_source: str
    predicted_counts: dict[str, int] | None = None  # labels predicted in the file
    oof: Predictions | None = None  # the blend's honest OOF probabilities (as log-probabilities)
    why_no_oof: str = ""


def blends(workdir: str | Path, label_names) -> list[BlendInfo]:
    """Every ``submissions/*.manifest.json`` of the workdir, with the file's predicted labels and the blend's
    honest OOF predictions where they were saved (``<file>.oof.npz``)."""
    from submissions import predicted_labels

    out = []
    for path in sorted((Path(workdir) / "submissions").glob("*.manifest.json")):
        m = read_json(path)
        file = path.with_name(m["file"])
        info = BlendInfo(m["file"], m["method"], m["metric"], m["honest_oof_score"], m["best_member"],
                         m["member_oof_scores"][m["best_member"]], m["weights"], m.get("test_source", "folds"))
        if file.exists():
            info.predicted_counts = dict(Counter(predicted_labels(file, m["format"], label_names)))
        oof = file.with_name(file.name + ".oof.npz")
        if oof.exists():
            info.oof = load_predictions(oof)
        else:
            info.why_no_oof = f"{oof.name} not found (blends written before this version kept no OOF predictions)"
        out.append(info)
    return out


@dataclass
class DataInfo:
    """What the runs were trained on: from the best run's data record."""

    path: str
    rows: int
    label_counts: dict[str, int]
    token_lengths: np.ndarray | None
    max_len: int
    one_window: int
    two_windows: int
    repairs: int
    repairs_csv: str
    fold_map: dict = field(default_factory=dict)
    overlaps: int = 0  # rows whose subject and object spans overlap (marked at their positions)
    skipped_rows: int = 0  # training rows left out by --bad-rows skip
    lists: dict = field(default_factory=dict)  # kind -> the CSV listing them


def data_info(run: RunDir) -> DataInfo | None:
    """The run's ``data.json`` (written when the run was made), or None for runs made before it existed."""
    path = run.root / "data.json"
    if not path.exists():
        return None
    d = read_json(path)
    lengths = np.asarray(d["token_lengths"], dtype=np.int64) if d.get("token_lengths") is not None else None
    return DataInfo(d["path"], d["rows"], d["label_counts"], lengths, d["max_len"], d["one_window"], d["two_windows"],
                    d["repairs"], d.get("repairs_csv", ""), run.read_config().get("fold_map", {}), d.get("overlaps", 0),
                    d.get("skipped_rows", 0), {k: d[f"{k}_csv"] for k in ("overlaps", "skipped") if d.get(f"{k}_csv")})


def oof_probs(pred: Predictions) -> np.ndarray:
    """Probabilities from stored logits (for a blend's file: log-probabilities, which softmax returns unchanged)."""
    return softmax(pred.logits)


def same_fold_map(blend_list: list[BlendInfo], oof: Predictions) -> list[BlendInfo]:
    """The blends whose honest OOF predictions were made on ``oof``'s fold map (comparable with it)."""
    return [b for b in blend_list if b.oof is not None and b.oof.fold_map_hash == oof.fold_map_hash]


def suspect_source(best_run: str, oof: Predictions, comparable: list[BlendInfo]) -> tuple[Predictions, str]:
    """Where likely label errors are looked for: the best blend's honest OOF predictions, else the best run's."""
    if comparable:
        b = max(comparable, key=lambda b: b.honest)
        return b.oof, f"blend {b.file} (honest OOF)"
    return oof, f"best run {best_run}"


def likely_label_errors(best_run: str, oof: Predictions, comparable: list[BlendInfo]) -> tuple[list[Suspect], str]:
    """Confident-learning suspects of the report (and the notebook's ``suspect_labels``), with where they come
    from (see :func:`suspect_source`)."""
    pred, what = suspect_source(best_run, oof, comparable)
    return confident_suspects(pred.y, oof_probs(pred), pred.ids, pred.label_names), what
