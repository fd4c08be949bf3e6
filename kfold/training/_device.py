"""Where and how a fold computes: seeds, the device, the autocast precision (by what the hardware does), the
attention kernel, the model a run's settings build, and the autocast context. Shared by fine-tuning and
pretraining."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from kfold.core.config import Config
from kfold.core.errors import ConfigError
from kfold.core.variants import get_variant
from kfold.model import RelationModel, load_backbone


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


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast in ``dtype`` on ``device``; a no-op context for fp32 (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
