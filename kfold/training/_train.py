"""Training one fold: a flat loop that reads top to bottom (no callback framework)."""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from kfold.core.config import Config
from kfold.core.errors import ConfigError, TrainingError
from kfold.core.metrics import all_scores, auprc_labels, better, format_scores, softmax
from kfold.core.variants import get_variant
from kfold.data import unswap_logits
from kfold.encoding import (Features, accumulation_steps, collate, find_micro_batch, is_oom, length_grouped_batches,
                            padding_share, shuffled_batches, sorted_batches, split_micro)
from kfold.model import (RelationLoss, RelationModel, class_weight_vector, enable_checkpointing, linear_schedule,
                         load_backbone, param_groups, rdrop_kl, weight_average)

from ._resources import epoch_line


@dataclass
class FoldData:
    """One fold's training part, validation part and (optional) test set, already tokenised."""

    train: Features
    y_train: np.ndarray
    valid: Features
    y_valid: np.ndarray
    test: Features | None = None
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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def fold_seed(seed: int, fold: int) -> int:
    """The training seed of one fold: folds differ, and a fold is the same whatever process trains it."""
    return seed * 1000 + fold


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = cuda, but torch sees no CUDA device")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AMX or AVX512-BF16). There bf16
    autocast trains faster than fp32; elsewhere bf16 is emulated and slower."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)  # private helpers of torch.cpu; absent -> assume no
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            continue
    return False


def precision_note(name: str, device: torch.device) -> str | None:
    """A one-line note on the CPU's bf16: what ``auto`` chose, or a warning when bf16 was asked for where it is
    emulated (several times slower than fp32). None on other devices."""
    if device.type != "cpu":
        return None
    native = cpu_has_native_bf16()
    if name == "auto":
        return ("note: this CPU computes bf16 in hardware (AMX/AVX512-BF16): --precision auto trains in bf16 "
                "(--precision fp32 to opt out)" if native else
                "note: this CPU has no bf16 hardware (AMX/AVX512-BF16), where bf16 is emulated and slower: "
                "--precision auto trains in fp32")
    if name == "bf16" and not native:
        return "warning: --precision bf16 on a CPU without AMX or AVX512-BF16 is emulated and slower than fp32"
    return None


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). ``auto``: bf16 on CUDA when supported, else fp16; on the CPU bf16
    where it computes bf16 in hardware (faster there), fp32 where bf16 would be emulated; fp32 elsewhere."""
    if name == "fp32" or (name == "auto" and device.type not in ("cuda", "cpu")):
        return None
    if name == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("precision = fp16 needs CUDA (the gradient scaler is CUDA-only); use bf16 or fp32")
    return torch.bfloat16 if name == "bf16" else torch.float16


def pick_attention(name: str, device: torch.device, dtype: torch.dtype | None) -> str | None:
    """The attention kernel for transformers (None = its default, fused SDPA). ``auto``: "eager" for bf16 on
    the CPU, where it trains 1.08x faster than SDPA with attention dropout and 1.63x faster without
    (benchmarks/attention_cpu.py), else the default."""
    if name != "auto":
        return name
    return "eager" if device.type == "cpu" and dtype == torch.bfloat16 else None


def compute_line(cfg: Config) -> str:
    """What a run computes with: ``backbone minilm (path), attention sdpa, precision fp32 on cpu``."""
    from kfold.encoding import resolve_backbone

    device = pick_device(cfg.device)
    dtype = pick_precision(cfg.precision, device)
    kernel = pick_attention(cfg.attn_implementation, device, dtype) or "sdpa"
    path = resolve_backbone(cfg.backbone)
    where = f" ({path})" if path != cfg.backbone else ""
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return f"backbone {cfg.backbone}{where}, attention {kernel}, precision {precision} on {device.type}"


def build_model(cfg: Config, num_labels: int, vocab_size: int | None, device: torch.device | None = None,
                dtype: torch.dtype | None = None) -> RelationModel:
    """Backbone (Auto classes) + the variant's head, with the config's activation/pool/dropout overrides.
    ``device`` / ``dtype``: where and in which autocast dtype the model will run (default: CPU, fp32), for
    ``cfg.attn_implementation`` = auto (see ``pick_attention``)."""
    variant = get_variant(cfg.variant).with_overrides(cfg.activation, cfg.pool)
    attention = pick_attention(cfg.attn_implementation, device or torch.device("cpu"), dtype)
    backbone, has_pooler = load_backbone(cfg.backbone, variant.use_pooler and cfg.cls_vector == "auto", vocab_size,
                                         backbone_dropout=cfg.backbone_dropout, attention_dropout=cfg.attention_dropout,
                                         attn_implementation=attention)
    cls_vector = "pooler" if has_pooler else "first" if cfg.cls_vector == "auto" else cfg.cls_vector
    return RelationModel(backbone, variant, num_labels, cfg.dropout, cls_vector)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
        with _autocast(device, dtype):
            logits = model(**batch)["logits"]
        # logits are stored as float32 whatever the compute precision: bf16 keeps only ~3 digits,
        # too few for temperature scaling and blending later
        out[idx] = logits.float().cpu().numpy()
    return out


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
    where = where or f"{desc} fold {fold}"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    dtype = pick_precision(cfg.precision, device)
    if device.type == "cuda":
        # TF32 matmuls: ~2x faster fp32 on Ampere+ with no visible effect on fine-tuning
        torch.set_float32_matmul_precision("high")
    seed = fold_seed(cfg.seed, fold)
    seed_everything(seed)
    num_labels = len(label_names)
    model = model_factory() if model_factory else build_model(cfg, num_labels, vocab_size, device, dtype)
    model.loss_fn = RelationLoss(cfg.loss, cfg.label_smoothing, cfg.focal_gamma,
                                 class_weight_vector(data.y_train, num_labels, cfg.class_weights))
    if cfg.grad_checkpointing:
        enable_checkpointing(model.backbone)
    model.to(device)
    forward = torch.compile(model, dynamic=True) if cfg.compile else model
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, fused=device.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    # --ema: an exponential moving average of the weights is what gets evaluated, selected and saved
    # (a second copy of the model; the raw weights keep training)
    averaged = weight_average(model, cfg.ema) if cfg.ema else None
    eval_model = averaged.module if averaged is not None else model
    # --average-epochs N: the mean of the weights at the ends of the last N epochs replaces epoch selection
    # (made at the first of those epochs, so the copy costs no memory before)
    epoch_average: torch.optim.swa_utils.AveragedModel | None = None
    averaged_epochs = cfg.averaged_epochs()

    def run_micro(idx: np.ndarray, scale: float) -> torch.Tensor:
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(data.train, idx, pad_id, data.y_train).items()}
        if cfg.rdrop:  # R-Drop: every row twice in one pass, so each copy gets its own dropout masks
            batch = {k: torch.cat([v, v]) for k, v in batch.items()}
        with _autocast(device, dtype):
            out = forward(**batch)
            loss = out["loss"] + cfg.rdrop * rdrop_kl(out["logits"]) if cfg.rdrop else out["loss"]
        scaler.scale(loss * scale).backward()
        return loss.detach()

    def evaluate(m: torch.nn.Module, what: str) -> tuple[np.ndarray, dict]:
        """Logits and scores of this fold's validation rows (model selection sees nothing else)."""
        logits = predict_views(m, data.valid, data.valid_swapped, data.swap_perm, cfg.eval_batch_size, device, pad_id, dtype)
        if not np.isfinite(logits).all():
            raise TrainingError(f"{where} {what}: validation logits are not finite")
        return logits, all_scores(data.y_valid, softmax(logits), label_names, cfg.no_relation or None)

    auprc_over = auprc_labels(data.y_valid, num_labels)  # the labels the validation rows hold (log lines say so)
    micro = math.ceil(cfg.batch_size / cfg.grad_accum)
    if cfg.auto_micro_batch:
        longest = np.argsort(-data.train.lengths, kind="stable")[: cfg.batch_size]
        model.train()

        def probe(m: int) -> None:
            run_micro(longest[:m], 0.0)
            optimizer.zero_grad(set_to_none=True)

        def release() -> None:
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

        micro = min(micro, find_micro_batch(cfg.batch_size, probe, release))
        seed_everything(seed)  # the probe used dropout randomness; start training from the same state
    accum = accumulation_steps(cfg.batch_size, micro)

    # one optimizer step per batch of batch_size rows: the scheduler counts optimizer steps, not
    # micro-batches, so warmup and decay do not depend on how the batch was split to fit in memory
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, round(cfg.warmup_ratio * total_steps)))

    best: tuple[float, int, np.ndarray, dict, dict | None] | None = None
    no_rows = np.zeros((0, num_labels), dtype=np.float32)  # the refit has no validation rows to predict
    history: list[dict] = []
    train_seconds, train_rows, pad_shares = 0.0, 0, []
    nonfinite_streak = 0
    for epoch in range(cfg.epochs):
        model.train()
        epoch_seed = seed * 100 + epoch
        if cfg.length_grouping:
            batches = length_grouped_batches(data.train.lengths, cfg.batch_size, epoch_seed)
        else:
            batches = shuffled_batches(len(data.train), cfg.batch_size, epoch_seed)
        pad_shares.append(padding_share(data.train, [m for b in batches for m in split_micro(b, micro)]))
        bar = tqdm(batches, desc=f"{where} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   file=sys.stderr, disable=None, dynamic_ncols=True)
        losses = []
        t0 = time.perf_counter()
        for step, batch_idx in enumerate(bar):
            # each micro-batch's mean loss is weighted by its share of the batch's rows, so the summed
            # gradient is the batch mean even when the last micro-batch (or the epoch's last batch) is short
            # (summed on the device, read once per step: a host sync per micro-batch would stall a GPU)
            step_loss_t = sum(run_micro(idx, len(idx) / len(batch_idx)) * (len(idx) / len(batch_idx))
                              for idx in split_micro(batch_idx, micro))
            step_loss = float(step_loss_t)
            if not math.isfinite(step_loss):
                nonfinite_streak += 1
                # in fp16 an overflow is the scaler's to handle (it skips the step and lowers the scale);
                # anywhere else, or when it keeps happening, the run is broken
                if dtype != torch.float16 or nonfinite_streak > 8:
                    raise TrainingError(f"{where} epoch {epoch + 1} step {step + 1}: loss is {step_loss} "
                                        f"(lower --lr, check the data, or use --precision bf16/fp32)")
            else:
                nonfinite_streak = 0
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            losses.append(step_loss)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        bar.close()
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        train_rows += len(data.train)

        # model selection on this fold's validation part only; the test set is never scored here
        scored = len(data.valid) and (cfg.epoch_scores or not cfg.average_epochs)
        valid_logits, scores = evaluate(eval_model, f"epoch {epoch + 1}") if scored else (no_rows, {})
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "seconds": round(epoch_seconds, 2), **scores})
        shown = f" {format_scores(scores, auprc_over)}" if scores else ""
        log(epoch_line(f"{where} epoch {epoch + 1}: loss {np.mean(losses):.4f}{shown} ({epoch_seconds:.0f}s)", history[-1]))
        if cfg.average_epochs:
            if epoch + 1 in averaged_epochs:
                if epoch_average is None:
                    epoch_average = weight_average(model)
                epoch_average.update_parameters(model)
            continue
        # without validation rows (the refit) there is nothing to choose on: keep the epoch given, else the last
        chosen = (epoch + 1 == (keep_epoch or cfg.epochs) if not len(data.valid)
                  else best is None or better(cfg.metric, scores[cfg.metric], best[0]))
        if chosen:
            last = epoch == cfg.epochs - 1
            state = None if last else {k: v.detach().to("cpu", copy=True) for k, v in eval_model.state_dict().items()}
            best = (scores.get(cfg.metric, float("nan")), epoch + 1, valid_logits, scores, state)

    if epoch_average is not None:
        eval_model = epoch_average.module
        what = f"weights averaged over epochs {averaged_epochs[0]}-{averaged_epochs[-1]}"
        valid_logits, scores = evaluate(eval_model, what) if len(data.valid) else (no_rows, {})
        history.append({"epoch": "average", "averaged_epochs": list(averaged_epochs), **scores})
        log(f"{where} {what}" + (f": {format_scores(scores, auprc_over)}" if scores else ""))
        best = (scores.get(cfg.metric, float("nan")), cfg.epochs, valid_logits, scores, None)
    assert best is not None
    _, best_epoch, valid_logits, best_scores, state = best
    if state is not None:
        eval_model.load_state_dict(state)
    test_logits = None
    if data.test is not None:
        test_logits = predict_views(eval_model, data.test, data.test_swapped, data.swap_perm, cfg.eval_batch_size,
                                    device, pad_id, dtype)
        if not np.isfinite(test_logits).all():
            raise TrainingError(f"{where}: test logits are not finite")
    return FoldResult(
        valid_logits=valid_logits, test_logits=test_logits, best_epoch=best_epoch, metrics=best_scores,
        history=history, train_seconds=train_seconds, train_examples_per_s=train_rows / max(train_seconds, 1e-9),
        padding_share=float(np.mean(pad_shares)), micro_batch=micro, accum_steps=accum,
        state_dict=copy.deepcopy({k: v.cpu() for k, v in eval_model.state_dict().items()}) if cfg.save_models else None,
    )
