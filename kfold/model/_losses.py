"""Losses: cross-entropy (optionally label-smoothed and class-weighted), focal loss, R-Drop's consistency term."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kfold.core.errors import unknown_name

LOSSES = ("ce", "focal")
CLASS_WEIGHTS = ("none", "balanced")


def class_weight_vector(y: np.ndarray, num_labels: int, mode: str,
                        row_weights: np.ndarray | None = None) -> torch.Tensor | None:
    """``balanced``: n / (C * count_c), computed on the fold's training part; ``none``: None. ``y``: label indices,
    or soft targets [N, C], which count as their probabilities (a one-hot row as its label); ``row_weights``: each
    row counts this much (pseudo-labelled rows: ``--pseudo-weight``), n being their sum.

    >>> class_weight_vector(np.array([0, 0, 1]), 2, "balanced").tolist()
    [0.75, 1.5]
    """
    if mode not in CLASS_WEIGHTS:
        raise unknown_name("class_weights", mode, CLASS_WEIGHTS)
    if mode == "none":
        return None
    targets = y.astype(np.float64) if y.ndim == 2 else np.eye(num_labels)[y]
    w = np.ones(len(y)) if row_weights is None else row_weights.astype(np.float64)
    counts = (targets * w[:, None]).sum(0)
    weights = w.sum() / (num_labels * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


class RelationLoss(torch.nn.Module):
    """Mean loss over a batch.

    ``ce``: cross-entropy with ``label_smoothing`` and optional class weights.
    ``focal``: (1 - p_t)^gamma times the (smoothed, weighted) cross-entropy (Lin et al. 2017),
    p_t being the unsmoothed probability of the true class.

    ``labels``: label indices [B], or soft targets [B, C] (probabilities, rows summing to 1: a teacher's, for
    pseudo-labelled rows). A soft target q is the one-hot vector's generalisation, and a one-hot q gives exactly the
    index's loss: smoothing mixes it as (1 - e) q + e / C, class weights give -sum_c w_c q_c log p_c (PyTorch's
    rule for probability targets), and focal's p_t is the expected probability of the target, sum_c q_c p_c.
    ``weights`` [B]: each row's loss is multiplied by its weight before the mean over the batch's rows (so the mean
    of micro-batches weighted by their share of rows stays the batch's).

    Example
    -------
    >>> loss = RelationLoss("ce", label_smoothing=0.05)
    >>> float(loss(torch.zeros(2, 3), torch.tensor([0, 1]))) > 0
    True
    """

    def __init__(self, kind: str = "ce", label_smoothing: float = 0.0, gamma: float = 2.0,
                 weight: torch.Tensor | None = None):
        super().__init__()
        if kind not in LOSSES:
            raise unknown_name("loss", kind, LOSSES)
        self.kind = kind
        self.label_smoothing = float(label_smoothing)
        self.gamma = float(gamma)
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weight.to(logits.device) if self.weight is not None else None
        if labels.is_floating_point():  # soft targets in the logits' dtype (a teacher's float64 included)
            labels = labels.to(logits.dtype)
        per_example = F.cross_entropy(logits, labels, weight=weight, label_smoothing=self.label_smoothing, reduction="none")
        if self.kind == "focal":
            probs = torch.softmax(logits, dim=-1)
            p_true = (probs * labels).sum(1) if labels.is_floating_point() else probs.gather(1, labels[:, None]).squeeze(1)
            per_example = (1.0 - p_true).clamp(min=0).pow(self.gamma) * per_example
        if weights is not None:
            per_example = per_example * weights.to(per_example.dtype)
        return per_example.mean()


def rdrop_kl(logits: torch.Tensor) -> torch.Tensor:
    """R-Drop's consistency term (Liang et al. 2021) for a batch that holds every row twice (the first half,
    then the same rows again, each pass with its own dropout masks): the symmetric KL divergence between the
    two halves' predicted distributions, averaged over rows.

    Example
    -------
    >>> float(rdrop_kl(torch.zeros(4, 3)))  # identical predictions
    0.0
    """
    p, q = logits.float().log_softmax(-1).chunk(2)
    return 0.5 * (F.kl_div(q, p, reduction="batchmean", log_target=True)
                  + F.kl_div(p, q, reduction="batchmean", log_target=True))
