"""The optimiser's side of training: parameter groups (weight decay, head and layer-wise learning rates),
the warmup-then-linear-decay schedule and running weight averages (EMA, epoch averaging)."""

from __future__ import annotations

import re
from typing import Callable

import torch

from kfold.core.config import Config

from ._models import RelationModel

_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a backbone parameter (its name inside the backbone) for layer-wise lr decay: embeddings 0,
    encoder layer i -> i + 1, anything else (pooler, a final LayerNorm) -> num_layers + 1."""
    if name.split(".", 1)[0].startswith("embeddings"):  # also ELECTRA's embeddings_project
        return 0
    match = _LAYER.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def param_groups(model: RelationModel, cfg: Config) -> list[dict]:
    """AdamW groups. Biases and LayerNorm weights (every 1-D tensor) get no weight decay: decay would
    pull LayerNorm gains toward 0 and shift biases, which regularises nothing useful. The head's lr is
    ``head_lr`` (or ``lr``); with ``layer_lr_decay`` < 1 a backbone parameter at depth d (see
    ``layer_depth``) gets ``lr * decay ** (num_layers - d)``, capped at ``lr``."""
    head_ids = {id(p) for p in model.head_parameters()}
    num_layers = int(getattr(model.backbone.config, "num_hidden_layers", 0) or 0)
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in head_ids:
            lr = cfg.head_lr or cfg.lr
        else:
            depth = layer_depth(name.removeprefix("backbone."), num_layers)
            lr = cfg.lr * cfg.layer_lr_decay ** max(0, num_layers - depth)
        groups.setdefault((lr, p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": cfg.weight_decay if decays else 0.0}
            for (lr, decays), ps in groups.items()]


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LambdaLR factor per optimizer step: linear warmup to 1, then linear decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def weight_average(model: torch.nn.Module, decay: float = 0.0) -> torch.optim.swa_utils.AveragedModel:
    """A running average of ``model``'s parameters, updated by ``update_parameters(model)``.

    ``decay`` > 0: exponential moving average (each update moves ``1 - decay`` of the way to the current
    weights); 0: the equal-weight mean of every update (stochastic weight averaging). The first update
    copies the weights. Buffers are not averaged: BERT-style encoders keep integer position ids there,
    which an average would corrupt.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    kwargs = {"multi_avg_fn": get_ema_multi_avg_fn(decay)} if decay else {}
    return AveragedModel(model, use_buffers=False, **kwargs)
