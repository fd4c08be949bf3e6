"""The unit of work: one part of a run (a fold, or the refit on every row), computed wherever an executor runs it.

A part gets everything it needs as values (the run's token features and labels, put once per run, and a small
spec) and returns everything it makes (logits, the completion record's numbers, saved weights): it never reads or
writes the run store, so a worker on another machine needs no shared disk and never sees the workdir. The driver
(``kfold.training._schedule``) writes the store.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kfold.core.config import Config
from kfold.core.store import REFIT
from kfold.encoding import Features, concat_features

from ._device import pick_device
from ._pretrain import PretrainPayload, PretrainSpec, pretrain_epoch
from ._pseudo import PseudoLabels
from ._train import FoldData, train_fold


@dataclass
class Swapped:
    """Token features of the training and test rows with the entities swapped (``--augment/--tta swap``)."""

    perm: np.ndarray
    train: Features
    test: Features | None


@dataclass
class RunPayload:
    """What every part of one run shares, sent once: token features of the training and test rows, the swapped
    readings (``--augment/--tta swap``), the gold labels, the fold of every row and every part's pseudo-labelled
    test rows (``--pseudo-from``)."""

    train: Features
    test: Features | None
    swapped: Swapped | None
    y: np.ndarray
    folds: np.ndarray
    pseudo: PseudoLabels | None = None


@dataclass(frozen=True)
class PartSpec:
    """One part: the run's config, which part, and the few numbers training needs."""

    cfg: Config
    run: str
    part: int | str  # fold number, or REFIT
    label_names: tuple[str, ...]
    pad_id: int
    vocab_size: int
    keep_epoch: int | None = None  # the refit: the epoch the folds chose (median), when no weights are averaged
    attempt: int = 1
    #: the share of one GPU this part may fill (``--gpus-per-fold 0.5``: 0.5); 0 = a whole device or none
    gpu_share: float = 0.0

    @property
    def name(self) -> str:
        """``fold 2`` or ``refit``."""
        return "refit" if self.part == REFIT else f"fold {self.part}"


@dataclass
class PartResult:
    """What a part returns to the driver."""

    valid_logits: np.ndarray | None
    test_logits: np.ndarray | None
    record: dict
    state_dict: dict | None = None
    log: list[str] = field(default_factory=list)


def part_indices(spec: PartSpec, payload: RunPayload) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of the part: a fold's, or every row and none for the refit."""
    if spec.part == REFIT:
        return np.arange(len(payload.y)), np.zeros(0, dtype=np.int64)
    return np.flatnonzero(payload.folds != spec.part), np.flatnonzero(payload.folds == spec.part)


def fold_data(cfg: Config, tr: np.ndarray, va: np.ndarray, y: np.ndarray, train_feats: Features,
              test_feats: Features | None, swapped: Swapped | None,
              pseudo: tuple[np.ndarray, np.ndarray] | None = None) -> FoldData:
    """One fold's FoldData. ``pseudo`` (test rows, the teachers' probabilities of them) adds pseudo-labelled test
    rows to the training part, as soft targets (every label a probability row, real rows one-hot) or as the
    teachers' top label (``--pseudo-targets``), each weighted by ``--pseudo-weight``. ``--augment swap`` adds the
    swapped copy of every training-part row, pseudo rows included (a soft target's columns permuted like a label).
    The validation part never gets either, so OOF stays one row per id. ``--tta swap`` adds the swapped validation
    and test rows."""
    train, y_train, w_train = train_feats.take(tr), y[tr], None
    sw_train = swapped.train.take(tr) if cfg.augment == "swap" else None
    if pseudo is not None:
        rows, probs = pseudo
        soft = cfg.pseudo_targets == "soft"
        num_labels = probs.shape[1]
        real = np.eye(num_labels, dtype=np.float32)[y_train] if soft else y_train
        train = concat_features(train, test_feats.take(rows))
        y_train = np.concatenate([real, probs if soft else probs.argmax(1)])
        w_train = np.concatenate([np.ones(len(tr), np.float32), np.full(len(rows), cfg.pseudo_weight, np.float32)])
        if sw_train is not None:
            sw_train = concat_features(sw_train, swapped.test.take(rows))
    if cfg.augment == "swap":
        if y_train.ndim == 2:  # a soft target's probability of label c moves to label perm[c]
            y_swapped = np.empty_like(y_train)
            y_swapped[:, swapped.perm] = y_train
        else:
            y_swapped = swapped.perm[y_train]
        train, y_train = concat_features(train, sw_train), np.concatenate([y_train, y_swapped])
        w_train = None if w_train is None else np.concatenate([w_train, w_train])
    data = FoldData(train, y_train, train_feats.take(va), y[va], test_feats, w_train=w_train)
    if cfg.tta == "swap":
        data.valid_swapped, data.test_swapped, data.swap_perm = swapped.train.take(va), swapped.test, swapped.perm
    return data


def limit_gpu_memory(share: float, cuda=None) -> bool:
    """A part packed with others on one GPU (``--gpus-per-fold 0.5``) may fill only its share of the device's
    memory: torch's allocator raises out-of-memory beyond it, so ``--auto-micro-batch`` sizes the micro-batch
    within the share instead of from memory the other part is about to take. Returns whether a limit was set.
    ``cuda``: ``torch.cuda`` (replaceable for tests)."""
    if not 0.0 < share < 1.0:
        return False
    if cuda is None:
        import torch

        cuda = torch.cuda
    if not cuda.is_available():
        return False
    cuda.set_per_process_memory_fraction(share, 0)
    return True


def compute_part(spec: PartSpec, payload: RunPayload, *, device_name: str = "", node: str = "",
                 log: Callable[[str], None] | None = None, model_factory: Callable | None = None) -> PartResult:
    """Train one part and predict its validation rows (a fold) and the test rows; returns the numbers.

    ``device_name`` and ``node`` say where it ran (completion record); ``log`` receives the epoch lines as they
    are written (default: kept in the result). ``model_factory(cfg, num_labels, vocab_size)`` replaces the
    backbone (tests).
    """
    limit_gpu_memory(spec.gpu_share)
    lines: list[str] = []
    tr, va = part_indices(spec, payload)
    pseudo = payload.pseudo.part(spec.part) if payload.pseudo is not None else None
    fdata = fold_data(spec.cfg, tr, va, payload.y, payload.train, payload.test, payload.swapped, pseudo)
    refit = spec.part == REFIT
    t0 = time.perf_counter()
    res = train_fold(spec.cfg, spec.label_names, fdata, pad_id=spec.pad_id, vocab_size=spec.vocab_size,
                     fold=spec.cfg.folds if refit else spec.part, desc=spec.run, where=f"{spec.run} {spec.name}",
                     log=log or lines.append, keep_epoch=spec.keep_epoch,
                     model_factory=(lambda: model_factory(spec.cfg, len(spec.label_names), spec.vocab_size))
                     if model_factory else None)
    wall = time.perf_counter() - t0
    record = {
        "best_epoch": res.best_epoch, "metrics": res.metrics, "history": res.history, "n_train": len(tr),
        "n_valid": len(va), "pseudo_rows": 0 if pseudo is None else len(pseudo[0]), "train_seconds": round(res.train_seconds, 2), "wall_seconds": round(wall, 2),
        "train_examples_per_s": round(res.train_examples_per_s, 2), "padding_share": round(res.padding_share, 4),
        "micro_batch": res.micro_batch, "accum_steps": res.accum_steps, "pid": os.getpid(),
        "host": socket.gethostname(), "node": node or socket.gethostname(),
        "device": device_name or pick_device(spec.cfg.device).type, "attempt": spec.attempt,
    }
    return PartResult(None if refit else res.valid_logits, res.test_logits, record, res.state_dict, lines)


def pretrain_part(spec: PretrainSpec, payload: PretrainPayload, *, device_name: str = "", node: str = "",
                  log: Callable[[str], None] | None = None) -> PartResult:
    """One epoch of ``kfold pretrain`` as a part: the epoch's record (with where it ran) and the state after it
    come back to the driver, which saves them (``state_dict``); ``log`` as for :func:`compute_part`."""
    limit_gpu_memory(spec.gpu_share)
    lines: list[str] = []
    record, state = pretrain_epoch(spec, payload, log or lines.append)
    record.update(device=device_name or pick_device(spec.cfg.device).type, node=node or socket.gethostname())
    return PartResult(None, None, record, state, lines)
