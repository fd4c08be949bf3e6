"""Training one fold: a loop that reads top to bottom (no callback framework), in named pieces: the set-up, one
optimisation step (with its adversarial pass), one epoch, and the choice of the weights kept (the best epoch or the
epochs' average), with evaluation on the fold's validation rows only."""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from kfold.core.config import Config
from kfold.core.errors import TrainingError
from kfold.core.metrics import all_scores, auprc_labels, better, format_scores, softmax
from kfold.data import unswap_logits
from kfold.encoding import (Features, accumulation_steps, collate, find_micro_batch, is_oom, length_grouped_batches,
                            padding_share, shuffled_batches, sorted_batches, split_micro)
from kfold.model import (RelationLoss, RelationModel, class_weight_vector, enable_checkpointing, linear_schedule,
                         param_groups, rdrop_kl, weight_average)

from ._adversarial import AWP, FGM, make_adversary
from ._device import autocast, build_model, fold_seed, pick_device, pick_precision, seed_everything
from ._resources import epoch_line


@dataclass
class FoldData:
    """One fold's training part, validation part and (optional) test set, already tokenised."""

    train: Features
    y_train: np.ndarray
    valid: Features
    y_valid: np.ndarray
    test: Features | None = None
    # --pseudo-from: y_train holds soft targets [N, C] (or label indices), and each training row's loss weight
    # (real rows 1, pseudo-labelled rows --pseudo-weight); None = every row 1
    w_train: np.ndarray | None = None
    # --tta swap: the same validation / test rows with the entities swapped, and the label permutation
    # that reads their logits back in the original order (kfold.data, entity swap)
    valid_swapped: Features | None = None
    test_swapped: Features | None = None
    swap_perm: np.ndarray | None = None


@dataclass
class FoldResult:
    """What a fold leaves behind: float32 logits, the chosen epoch and how training went."""

    valid_logits: np.ndarray
    test_logits: np.ndarray | None
    best_epoch: int
    metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    train_examples_per_s: float = 0.0
    padding_share: float = 0.0
    micro_batch: int = 0
    accum_steps: int = 1
    state_dict: dict | None = None


def predict(model: torch.nn.Module, feats: Features, batch_size: int, device: torch.device, pad_id: int,
            dtype: torch.dtype | None = None) -> np.ndarray:
    """Float32 logits for every row of ``feats``, in row order (batches run longest first).

    Runs without gradients at the (larger) evaluation batch size; on out-of-memory the batch size
    is halved and prediction restarts, down to single rows.
    """
    while True:
        try:
            return _predict(model, feats, batch_size, device, pad_id, dtype)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not is_oom(exc) or batch_size == 1:
                raise
            batch_size //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()


def predict_views(model: torch.nn.Module, feats: Features, swapped: Features | None, perm: np.ndarray | None,
                  batch_size: int, device: torch.device, pad_id: int, dtype) -> np.ndarray:
    """Logits of ``feats``; with ``swapped`` (test-time entity swap) the mean of the logits of both
    readings, the swapped one's columns put back under the original labels."""
    logits = predict(model, feats, batch_size, device, pad_id, dtype)
    if swapped is None:
        return logits
    other = unswap_logits(predict(model, swapped, batch_size, device, pad_id, dtype), perm)
    return ((logits.astype(np.float64) + other) / 2).astype(np.float32)


@torch.inference_mode()
def _predict(model, feats: Features, batch_size: int, device: torch.device, pad_id: int, dtype) -> np.ndarray:
    model.eval()
    out = np.zeros((len(feats), model.classifier[-1].out_features), dtype=np.float32)
    for idx in sorted_batches(feats.lengths, batch_size):
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(feats, idx, pad_id).items()}
        with autocast(device, dtype):
            logits = model(**batch)["logits"]
        # logits are stored as float32 whatever the compute precision: bf16 keeps only ~3 digits,
        # too few for temperature scaling and blending later
        out[idx] = logits.float().cpu().numpy()
    return out


@dataclass
class _Fold:
    """One fold's training as it goes: what ``_setup`` builds and the steps below read and update."""

    cfg: Config
    data: FoldData
    where: str
    device: torch.device
    dtype: torch.dtype | None
    pad_id: int
    seed: int
    model: RelationModel
    forward: Callable
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: torch.optim.swa_utils.AveragedModel | None
    adversary: FGM | AWP | None
    micro: int = 0
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    nonfinite_streak: int = 0
    averaged: torch.nn.Module | None = None  # --average-epochs: the average, once made (see _Choice.final)

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated, selected and saved: the epochs' average once made, else the EMA copy with ``--ema``,
        else the trained model."""
        if self.averaged is not None:
            return self.averaged
        return self.ema.module if self.ema is not None else self.model


def train_fold(cfg: Config, label_names: tuple[str, ...], data: FoldData, *, pad_id: int, vocab_size: int | None,
               fold: int = 0, desc: str = "", log: Callable[[str], None] = print,
               model_factory: Callable[[], RelationModel] | None = None, keep_epoch: int | None = None,
               where: str = "") -> FoldResult:
    """Train on ``data.train``, pick the best epoch on ``data.valid`` only, predict ``data.test`` with it.

    Parameters
    ----------
    cfg: the run's settings. label_names: logit column names. data: tokenised parts of this fold.
    pad_id / vocab_size: from the tokenizer (vocab_size includes added marker tokens).
    fold: the fold number (seeds training). model_factory: build the model (tests pass tiny encoders).
    keep_epoch: with no validation rows (the refit on every row) and no ``average_epochs``, the epoch whose
        weights are kept (default: the last).
    where: how log lines and errors name this training (default ``"<desc> fold <fold>"``).

    Returns
    -------
    FoldResult with float32 logits of the validation rows (best epoch) and of the test rows.

    Raises
    ------
    TrainingError on a NaN/inf loss (in fp16 after the gradient scaler had several chances) or
    non-finite logits; ConfigError on impossible settings.

    Example
    -------
    >>> res = train_fold(Config(epochs=1), names, FoldData(tr, ytr, va, yva), pad_id=0, vocab_size=None)  # doctest: +SKIP
    """
    f = _setup(cfg, len(label_names), data, pad_id, vocab_size, fold, model_factory, where or f"{desc} fold {fold}")
    choice = _Choice(f, label_names, keep_epoch)
    history: list[dict] = []
    train_seconds, train_rows, pad_shares = 0.0, 0, []
    for epoch in range(cfg.epochs):
        loss, seconds, adv_seconds, pad = _train_epoch(f, epoch)
        train_seconds += seconds
        train_rows += len(data.train)
        pad_shares.append(pad)
        choice.after_epoch(epoch, loss, seconds, adv_seconds, history, log)
    valid_logits, best_epoch, best_scores = choice.final(history, log)
    test_logits = None
    if data.test is not None:
        test_logits = predict_views(f.eval_model, data.test, data.test_swapped, data.swap_perm, cfg.eval_batch_size,
                                    f.device, pad_id, f.dtype)
        if not np.isfinite(test_logits).all():
            raise TrainingError(f"{f.where}: test logits are not finite")
    return FoldResult(
        valid_logits=valid_logits, test_logits=test_logits, best_epoch=best_epoch, metrics=best_scores,
        history=history, train_seconds=train_seconds, train_examples_per_s=train_rows / max(train_seconds, 1e-9),
        padding_share=float(np.mean(pad_shares)), micro_batch=f.micro, accum_steps=accumulation_steps(cfg.batch_size, f.micro),
        state_dict=copy.deepcopy({k: v.cpu() for k, v in f.eval_model.state_dict().items()}) if cfg.save_models else None,
    )


def _setup(cfg: Config, num_labels: int, data: FoldData, pad_id: int, vocab_size: int | None, fold: int,
           model_factory: Callable[[], RelationModel] | None, where: str) -> _Fold:
    """Seeds, the model with its loss, optimizer, scaler, weight averages, adversary, micro-batch and schedule."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    dtype = pick_precision(cfg.precision, device)
    if device.type == "cuda":
        # TF32 matmuls: ~2x faster fp32 on Ampere+ with no visible effect on fine-tuning
        torch.set_float32_matmul_precision("high")
    seed = fold_seed(cfg.seed, fold)
    seed_everything(seed)
    model = model_factory() if model_factory else build_model(cfg, num_labels, vocab_size, device, dtype)
    model.loss_fn = RelationLoss(cfg.loss, cfg.label_smoothing, cfg.focal_gamma,
                                 class_weight_vector(data.y_train, num_labels, cfg.class_weights, data.w_train))
    if cfg.grad_checkpointing:
        enable_checkpointing(model.backbone)
    model.to(device)
    f = _Fold(cfg, data, where, device, dtype, pad_id, seed, model,
              forward=torch.compile(model, dynamic=True) if cfg.compile else model,
              optimizer=torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, fused=device.type in ("cuda", "cpu")),
              scaler=torch.amp.GradScaler("cuda", enabled=dtype == torch.float16),
              # --ema: an exponential moving average of the weights is what gets evaluated, selected and saved
              # (a second copy of the model; the raw weights keep training)
              ema=weight_average(model, cfg.ema) if cfg.ema else None,
              adversary=make_adversary(model, cfg.adversarial, cfg.adv_eps, cfg.adv_lr))
    f.micro = math.ceil(cfg.batch_size / cfg.grad_accum)
    if cfg.auto_micro_batch:
        longest = np.argsort(-data.train.lengths, kind="stable")[: cfg.batch_size]
        model.train()

        def probe(m: int) -> None:
            _micro_pass(f, longest[:m], 0.0)
            f.optimizer.zero_grad(set_to_none=True)

        def release() -> None:
            f.optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

        f.micro = min(f.micro, find_micro_batch(cfg.batch_size, probe, release))
        seed_everything(seed)  # the probe used dropout randomness; start training from the same state
    # one optimizer step per batch of batch_size rows: the scheduler counts optimizer steps, not
    # micro-batches, so warmup and decay do not depend on how the batch was split to fit in memory
    total_steps = math.ceil(len(data.train) / cfg.batch_size) * cfg.epochs
    f.scheduler = torch.optim.lr_scheduler.LambdaLR(f.optimizer, linear_schedule(total_steps, round(cfg.warmup_ratio * total_steps)))
    return f


def _micro_pass(f: _Fold, idx: np.ndarray, scale: float) -> torch.Tensor:
    """Forward and backward of one micro-batch, its loss weighted by ``scale``; the unweighted loss, detached."""
    cfg = f.cfg
    batch = {k: v.to(f.device, non_blocking=True) for k, v in collate(f.data.train, idx, f.pad_id, f.data.y_train,
                                                                         f.data.w_train).items()}
    if cfg.rdrop:  # R-Drop: every row twice in one pass, so each copy gets its own dropout masks
        batch = {k: torch.cat([v, v]) for k, v in batch.items()}
    with autocast(f.device, f.dtype):
        out = f.forward(**batch)
        loss = out["loss"] + cfg.rdrop * rdrop_kl(out["logits"]) if cfg.rdrop else out["loss"]
    f.scaler.scale(loss * scale).backward()
    return loss.detach()


def _batch_pass(f: _Fold, batch_idx: np.ndarray) -> torch.Tensor:
    """Forward and backward over a batch's micro-batches; the gradients add up to the batch mean's."""
    # each micro-batch's mean loss is weighted by its share of the batch's rows, so the summed gradient is
    # the batch mean even when the last micro-batch (or the epoch's last batch) is short (summed on the
    # device, read once per step: a host sync per micro-batch would stall a GPU)
    return sum(_micro_pass(f, idx, len(idx) / len(batch_idx)) * (len(idx) / len(batch_idx))
               for idx in split_micro(batch_idx, f.micro))


def _adversarial_pass(f: _Fold, batch_idx: np.ndarray) -> tuple[float, float]:
    """``--adversarial``: perturb from the whole batch's gradient (one perturbation per optimizer step, so the
    update does not depend on the micro-batch size a machine picked), run the batch again at the perturbed point,
    restore. Returns its loss and seconds (0 and 0 when the gradients gave no direction)."""
    t0 = time.perf_counter()
    adversary = f.adversary
    try:
        if not adversary.attack():
            return 0.0, 0.0
        if not adversary.keeps_clean_grads:
            f.optimizer.zero_grad(set_to_none=True)
        loss = float(_batch_pass(f, batch_idx))
    finally:
        adversary.restore()  # whatever stops the pass (an error, Ctrl-C), the weights are the clean ones
    return loss, time.perf_counter() - t0  # float(loss) waited for the pass's kernels (CUDA runs them async)


def _optimizer_step(f: _Fold, batch_idx: np.ndarray, epoch: int, step: int) -> tuple[float, float]:
    """One optimisation step on one batch: the clean pass, the adversarial pass (from ``--adv-start-epoch``), then
    unscale, clip, step and the EMA update (after the restore). Returns the clean loss and the adversarial seconds."""
    cfg = f.cfg
    step_loss = float(_batch_pass(f, batch_idx))
    if not math.isfinite(step_loss):
        f.nonfinite_streak += 1
        # in fp16 an overflow is the scaler's to handle (it skips the step and lowers the scale);
        # anywhere else, or when it keeps happening, the run is broken
        if f.dtype != torch.float16 or f.nonfinite_streak > 8:
            raise TrainingError(f"{f.where} epoch {epoch + 1} step {step + 1}: loss is {step_loss} "
                                f"(lower --lr, check the data, or use --precision bf16/fp32)")
    else:
        f.nonfinite_streak = 0
    adv_seconds = 0.0
    if f.adversary is not None and epoch + 1 >= cfg.adversarial_from():
        adv_loss, adv_seconds = _adversarial_pass(f, batch_idx)
        # a non-finite loss at the perturbed point would step NaN into the weights (fp16: the scaler skips it)
        if not math.isfinite(adv_loss) and f.dtype != torch.float16:
            raise TrainingError(f"{f.where} epoch {epoch + 1} step {step + 1}: the {cfg.adversarial} pass's loss is "
                                f"{adv_loss} (lower --adv-eps, or --adv-lr for awp)")
    f.scaler.unscale_(f.optimizer)
    torch.nn.utils.clip_grad_norm_(f.model.parameters(), cfg.max_grad_norm)
    f.scaler.step(f.optimizer)
    f.scaler.update()
    f.optimizer.zero_grad(set_to_none=True)
    f.scheduler.step()
    if f.ema is not None:
        f.ema.update_parameters(f.model)
    return step_loss, adv_seconds


def _train_epoch(f: _Fold, epoch: int) -> tuple[float, float, float, float]:
    """One pass over the fold's training part; its mean loss, seconds, adversarial seconds and padding share."""
    cfg, data = f.cfg, f.data
    f.model.train()
    epoch_seed = f.seed * 100 + epoch
    if cfg.length_grouping:
        batches = length_grouped_batches(data.train.lengths, cfg.batch_size, epoch_seed)
    else:
        batches = shuffled_batches(len(data.train), cfg.batch_size, epoch_seed)
    pad = padding_share(data.train, [m for b in batches for m in split_micro(b, f.micro)])
    bar = tqdm(batches, desc=f"{f.where} epoch {epoch + 1}/{cfg.epochs}", leave=False,
               file=sys.stderr, disable=None, dynamic_ncols=True)
    losses, adv_seconds = [], 0.0
    t0 = time.perf_counter()
    for step, batch_idx in enumerate(bar):
        loss, adv = _optimizer_step(f, batch_idx, epoch, step)
        losses.append(loss)
        adv_seconds += adv
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    bar.close()
    return float(np.mean(losses)), time.perf_counter() - t0, adv_seconds, pad


class _Choice:
    """Which weights a fold keeps: scores the validation rows after each epoch and keeps the best epoch's weights,
    or (``--average-epochs``) averages the last epochs' weights; the refit, with no validation rows, keeps the
    epoch given (default the last) or the average."""

    def __init__(self, f: _Fold, label_names: tuple[str, ...], keep_epoch: int | None) -> None:
        self.f, self.label_names, self.keep_epoch = f, label_names, keep_epoch
        self.auprc_over = auprc_labels(f.data.y_valid, len(label_names))  # the labels the validation rows hold
        self.no_rows = np.zeros((0, len(label_names)), dtype=np.float32)  # the refit has no validation rows to predict
        self.averaged_epochs = f.cfg.averaged_epochs()
        self.epoch_average: torch.optim.swa_utils.AveragedModel | None = None
        self.best: tuple[float, int, np.ndarray, dict, dict | None] | None = None

    def evaluate(self, m: torch.nn.Module, what: str) -> tuple[np.ndarray, dict]:
        """Logits and scores of this fold's validation rows (model selection sees nothing else)."""
        f = self.f
        logits = predict_views(m, f.data.valid, f.data.valid_swapped, f.data.swap_perm, f.cfg.eval_batch_size, f.device,
                               f.pad_id, f.dtype)
        if not np.isfinite(logits).all():
            raise TrainingError(f"{f.where} {what}: validation logits are not finite")
        return logits, all_scores(f.data.y_valid, softmax(logits), self.label_names, f.cfg.no_relation or None)

    def after_epoch(self, epoch: int, loss: float, seconds: float, adv_seconds: float, history: list[dict],
                    log: Callable[[str], None]) -> None:
        """Score the epoch (unless averaging with --no-epoch-scores), log it, and keep its weights if chosen."""
        f, cfg = self.f, self.f.cfg
        # model selection on this fold's validation part only; the test set is never scored here
        scored = len(f.data.valid) and (cfg.epoch_scores or not cfg.average_epochs)
        valid_logits, scores = self.evaluate(f.eval_model, f"epoch {epoch + 1}") if scored else (self.no_rows, {})
        history.append({"epoch": epoch + 1, "train_loss": loss, "seconds": round(seconds, 2),
                        **({"adv_seconds": round(adv_seconds, 2)} if f.adversary is not None else {}), **scores})
        shown = f" {format_scores(scores, self.auprc_over)}" if scores else ""
        log(epoch_line(f"{f.where} epoch {epoch + 1}: loss {loss:.4f}{shown} ({_seconds_note(cfg, seconds, adv_seconds)})",
                       history[-1]))
        if cfg.average_epochs:
            if epoch + 1 in self.averaged_epochs:
                if self.epoch_average is None:  # made at the first averaged epoch: no memory spent before
                    self.epoch_average = weight_average(f.model)
                self.epoch_average.update_parameters(f.model)
            return
        # without validation rows (the refit) there is nothing to choose on: keep the epoch given, else the last
        chosen = (epoch + 1 == (self.keep_epoch or cfg.epochs) if not len(f.data.valid)
                  else self.best is None or better(cfg.metric, scores[cfg.metric], self.best[0]))
        if chosen:
            last = epoch == cfg.epochs - 1
            state = None if last else {k: v.detach().to("cpu", copy=True) for k, v in f.eval_model.state_dict().items()}
            self.best = (scores.get(cfg.metric, float("nan")), epoch + 1, valid_logits, scores, state)

    def final(self, history: list[dict], log: Callable[[str], None]) -> tuple[np.ndarray, int, dict]:
        """Put the kept weights in place (``f.eval_model``); the validation logits, epoch and scores they give."""
        f, cfg = self.f, self.f.cfg
        if self.epoch_average is not None:
            f.averaged = self.epoch_average.module
            what = f"weights averaged over epochs {self.averaged_epochs[0]}-{self.averaged_epochs[-1]}"
            valid_logits, scores = self.evaluate(f.eval_model, what) if len(f.data.valid) else (self.no_rows, {})
            history.append({"epoch": "average", "averaged_epochs": list(self.averaged_epochs), **scores})
            log(f"{f.where} {what}" + (f": {format_scores(scores, self.auprc_over)}" if scores else ""))
            self.best = (scores.get(cfg.metric, float("nan")), cfg.epochs, valid_logits, scores, None)
        assert self.best is not None
        _, best_epoch, valid_logits, best_scores, state = self.best
        if state is not None:
            f.eval_model.load_state_dict(state)
        return valid_logits, best_epoch, best_scores


def _seconds_note(cfg: Config, seconds: float, adv_seconds: float) -> str:
    """``12s``; with adversarial passes their share and the cost against the same steps without them."""
    if cfg.adversarial == "none" or adv_seconds <= 0:
        return f"{seconds:.0f}s"
    return (f"{seconds:.0f}s, {cfg.adversarial} passes {adv_seconds:.0f}s of it: "
            f"{seconds / max(seconds - adv_seconds, 1e-9):.2f}x the time of the same steps without them")
