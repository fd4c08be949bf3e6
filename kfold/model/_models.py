"""Backbones through the Auto classes and the relation heads of the variant registry."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kfold.core.errors import ConfigError
from kfold.core.variants import Variant
from kfold.encoding import resolve_backbone


def _checkpoint_keys(path: Path) -> set[str] | None:
    """Parameter names stored in a local checkpoint folder, or None when they cannot be listed."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    single = path / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), "pt") as fh:
            return set(fh.keys())
    binary = path / "pytorch_model.bin"
    if binary.is_file():
        return set(torch.load(binary, map_location="meta", weights_only=True, mmap=True))
    return None


def _drop_unused_weights_report(record: logging.LogRecord) -> bool:
    """Logging filter: drop transformers' load report when all it lists are checkpoint weights left unused
    (a pooler skipped on purpose, pre-training heads); missing weights are load_backbone's own error."""
    text = record.getMessage()
    return not ("LOAD REPORT" in text and "UNEXPECTED" in text
                and not any(word in text for word in ("MISSING", "MISMATCH", "CONVERSION")))


@contextlib.contextmanager
def quiet_loading(keep: Callable[[logging.LogRecord], bool]):
    """transformers' weight loading without its "Loading weights" bar (it would print once per fold or epoch; the
    caller says once what it loads) and with only the messages of its loading logger that ``keep`` keeps."""
    from transformers.utils import logging as hf_logging

    report_logger = logging.getLogger("transformers.modeling_utils")
    report_logger.addFilter(keep)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        report_logger.removeFilter(keep)
        if bar_was_on:
            hf_logging.enable_progress_bar()


#: config attributes that hold an encoder's dropout, first match wins (BERT family; DistilBERT-style)
DROPOUT_KEYS = {"backbone_dropout": ("hidden_dropout_prob", "dropout"),
                "attention_dropout": ("attention_probs_dropout_prob", "attention_dropout")}


def _set_dropout(config, backbone: str, setting: str, p: float) -> None:
    """Write dropout ``p`` into the config attribute that ``setting`` names for this architecture."""
    key = next((k for k in DROPOUT_KEYS[setting] if type(getattr(config, k, None)) in (float, int)), None)
    if key is None:
        raise ConfigError(f"backbone '{backbone}': its config ({type(config).__name__}) has none of "
                          f"{', '.join(DROPOUT_KEYS[setting])}, so {setting} cannot be set; leave it at -1")
    setattr(config, key, p)


def load_backbone(backbone: str, want_pooler: bool, vocab_size: int | None = None, *, backbone_dropout: float = -1.0,
                  attention_dropout: float = -1.0, attn_implementation: str | None = None):
    """Load an encoder; returns (model, has_pooler).

    The pooler is built only when the variant wants it and the checkpoint has trained pooler weights
    (BERT does; RoBERTa, XLM-R and ELECTRA checkpoints do not), so loading never initialises backbone
    weights at random: a missing weight is an error, not a warning. ``backbone_dropout`` /
    ``attention_dropout`` >= 0 replace the checkpoint config's dropout on hidden states / attention
    probabilities; ``attn_implementation`` ("eager", "sdpa", None = transformers' default) picks the kernel.
    """
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    path = resolve_backbone(backbone)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backbone '{backbone}': cannot load its config ({str(exc).splitlines()[0]})") from None
    for setting, p in (("backbone_dropout", backbone_dropout), ("attention_dropout", attention_dropout)):
        if p >= 0:
            _set_dropout(config, backbone, setting, p)
    keys = _checkpoint_keys(Path(path)) if os.path.isdir(path) else None
    has_pooler_weights = keys is None or any(".pooler." in f".{k}" or k.startswith("pooler.") for k in keys)
    kwargs = {"config": config, "attn_implementation": attn_implementation}
    model_cls = MODEL_MAPPING.get(type(config), None)
    accepts_flag = model_cls is not None and "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters
    use_pooler = bool(want_pooler and has_pooler_weights and accepts_flag)
    if accepts_flag:
        kwargs["add_pooling_layer"] = use_pooler
    try:
        with quiet_loading(_drop_unused_weights_report):
            model, info = AutoModel.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backbone '{backbone}': cannot load its weights ({str(exc).splitlines()[0]})") from None
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise ConfigError(f"backbone '{backbone}': the checkpoint lacks {len(missing)} weights ({missing[:3]}); "
                          "they would be initialised at random")
    if vocab_size and vocab_size != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model, use_pooler and getattr(model, "pooler", None) is not None


def enable_checkpointing(backbone: nn.Module) -> None:
    """Recompute activations in the backward pass (less memory, ~30% more compute); non-reentrant so it
    works with frozen inputs and autocast."""
    if hasattr(backbone, "activation_checkpointing_enable"):  # the transformers >= 5.x name
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(backbone.config, "use_cache"):
        backbone.config.use_cache = False


class ProjectionLayer(nn.Module):
    """R-BERT's FC layer: dropout -> activation -> linear."""

    def __init__(self, dim_in: int, dim_out: int, dropout: float, activation: str):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.act = nn.Tanh() if activation == "tanh" else nn.GELU()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.act(self.dropout(x)))


def _entity_vector(hidden: torch.Tensor, start: torch.Tensor, end: torch.Tensor, marker: torch.Tensor, pool: str,
                   skip: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the entity's token vectors [start, end), or the vector of its start-marker token. ``skip`` [B, 4]:
    two token ranges [a, b) inside the entity left out of the mean (the other entity's markers, where the two
    spans overlap; [0, 0) when unused)."""
    if pool == "start":
        return hidden[torch.arange(hidden.size(0), device=hidden.device), marker.long()]
    pos = torch.arange(hidden.size(1), device=hidden.device)[None, :]
    inside = (pos >= start[:, None]) & (pos < end[:, None])
    if skip is not None:
        for a, b in ((skip[:, 0], skip[:, 1]), (skip[:, 2], skip[:, 3])):
            inside &= ~((pos >= a[:, None]) & (pos < b[:, None]))
    mask = inside.to(hidden.dtype)
    summed = torch.bmm(mask.unsqueeze(1), hidden).squeeze(1)
    return summed / mask.sum(1, keepdim=True).clamp(min=1)


def combine_vectors(combine: str, c, e1, e2) -> torch.Tensor:
    """Concatenate the vectors as the variant's ``combine`` says (see kfold.core.variants.COMBINES)."""
    if combine == "cls":
        return c
    if combine == "pair":
        return torch.cat((e1, e2), dim=-1)
    if combine == "clsmul":
        return torch.cat((c * e1, c * e2), dim=-1)
    if combine == "clsmul_mul":
        return torch.cat((c * e1, c * e2, e1 * e2), dim=-1)
    if combine == "sbert":
        return torch.cat((e1, e2, (e1 - e2).abs(), e1 * e2), dim=-1)
    extra = {"cat": (), "mul": (e1 * e2,), "absdiff": ((e1 - e2).abs(),)}[combine]
    return torch.cat((c, e1, e2) + extra, dim=-1)


_WIDTH = {"cat": 3, "mul": 4, "absdiff": 4, "clsmul": 2, "clsmul_mul": 3, "sbert": 4, "pair": 2, "cls": 1}


class RelationModel(nn.Module):
    """An encoder plus a relation head. ``forward`` returns ``{"logits"}`` and ``{"loss"}`` with labels."""

    def __init__(self, backbone: nn.Module, variant: Variant, num_labels: int, dropout: float, cls_vector: str = "first"):
        super().__init__()
        self.backbone = backbone
        self.variant = variant
        # "pooler" (the backbone's trained pooler), "first" (first token's hidden state) or "mean" (all tokens)
        self.cls_vector = cls_vector
        hidden = backbone.config.hidden_size
        if variant.head == "rbert":
            self.cls_fc = ProjectionLayer(hidden, hidden, dropout, variant.activation) if variant.uses_cls else None
            if variant.uses_entities:
                self.e1_fc = ProjectionLayer(hidden, hidden, dropout, variant.activation)
                self.e2_fc = self.e1_fc if variant.share else ProjectionLayer(hidden, hidden, dropout, variant.activation)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * _WIDTH[variant.combine], num_labels))
        self.loss_fn = None

    def head_parameters(self):
        """Parameters that are new (not from the checkpoint)."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def forward(self, input_ids, attention_mask, ent, labels=None, weights=None) -> dict:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        v = self.variant
        if self.cls_vector == "pooler":
            cls = out.pooler_output
        elif self.cls_vector == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            cls = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            cls = hidden[:, 0]
        e1 = e2 = None
        if v.uses_entities:
            # columns 6-13 (kfold.encoding.ENT_COLUMNS): the other entity's markers inside each, left out
            skips = (ent[:, 6:10], ent[:, 10:14]) if ent.size(1) >= 14 else (None, None)
            e1 = _entity_vector(hidden, ent[:, 0], ent[:, 1], ent[:, 2], v.pool, skips[0])
            e2 = _entity_vector(hidden, ent[:, 3], ent[:, 4], ent[:, 5], v.pool, skips[1])
        if v.head == "rbert":
            cls = self.cls_fc(cls) if self.cls_fc is not None else cls
            if v.uses_entities:
                e1, e2 = self.e1_fc(e1), self.e2_fc(e2)
        logits = self.classifier(combine_vectors(v.combine, cls, e1, e2))
        result = {"logits": logits}
        if labels is not None and self.loss_fn is not None:
            result["loss"] = self.loss_fn(logits.float(), labels, weights)
        return result
