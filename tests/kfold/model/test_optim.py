"""Parameter groups (weight decay, head and layer-wise learning rates) and weight averages."""

from __future__ import annotations

import pytest
import torch

from kfold.core.config import Config
from kfold.core.errors import ConfigError
from kfold.model._optim import layer_depth, param_groups, weight_average
from kfold.training import build_model


def test_no_weight_decay_on_bias_and_layernorm(tiny_bert):
    model = build_model(Config(backbone=tiny_bert), 3, None)
    groups = param_groups(model, Config(backbone=tiny_bert, weight_decay=0.05, head_lr=1e-3))
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, p in model.named_parameters():
        is_norm_or_bias = name.endswith("bias") or "LayerNorm" in name
        assert (id(p) in no_decay) == is_norm_or_bias, name
    head = {id(p) for p in model.head_parameters()}
    assert all(g["lr"] == 1e-3 for g in groups if id(g["params"][0]) in head)


@pytest.mark.parametrize("kind", ["bert", "electra"])
def test_layer_lr_decay_scales_each_encoder_layer(tiny_dir, kind):
    from tiny import tiny_backbone

    backbone = tiny_backbone(kind, tiny_dir)
    cfg = Config(backbone=backbone, lr=1e-3, head_lr=5e-3, layer_lr_decay=0.5)
    model = build_model(cfg, 3, None)
    n = model.backbone.config.num_hidden_layers
    lr_of = {id(p): g["lr"] for g in param_groups(model, cfg) for p in g["params"]}
    seen = set()
    for name, p in model.named_parameters():
        parts = name.split(".")
        if not name.startswith("backbone."):
            expected = 5e-3
        elif parts[1].startswith("embeddings"):  # ELECTRA's embeddings_project too
            expected, _ = 1e-3 * 0.5**n, seen.add("embeddings")
        elif parts[1:3] == ["encoder", "layer"]:
            expected, _ = 1e-3 * 0.5 ** (n - 1 - int(parts[3])), seen.add(int(parts[3]))
        else:
            expected = 1e-3
        assert lr_of[id(p)] == pytest.approx(expected), name
    assert seen == {"embeddings", *range(n)}
    # ELECTRA checkpoints whose embedding size differs from the hidden size project the embeddings
    assert layer_depth("embeddings_project.weight", n) == 0 and layer_depth("pooler.dense.weight", n) == n + 1
    # no decay: one lr for the whole backbone
    plain = Config(backbone=backbone, lr=1e-3)
    assert {g["lr"] for g in param_groups(model, plain)} == {1e-3}


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_layer_lr_decay_out_of_range_is_refused(decay):
    with pytest.raises(ConfigError, match="layer_lr_decay"):
        Config(layer_lr_decay=decay)


def test_weight_average_is_a_moving_or_equal_average_of_parameters_only():
    model = torch.nn.Linear(3, 2)
    model.register_buffer("position_ids", torch.arange(7))
    start = model.weight.detach().clone()
    averaged = weight_average(model, 0.75)
    averaged.update_parameters(model)  # first call copies
    with torch.no_grad():
        model.weight.add_(4.0)
    averaged.update_parameters(model)
    torch.testing.assert_close(averaged.module.weight, start + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    assert torch.equal(averaged.module.position_ids, torch.arange(7))
    # decay 0: the equal-weight mean of every update (w, w + 4, w + 10 -> w + 14 / 3)
    equal = weight_average(model)
    for shift in (0.0, 6.0):
        with torch.no_grad():
            model.weight.add_(shift)
        equal.update_parameters(model)
    torch.testing.assert_close(equal.module.weight, start + 7.0)  # mean of w + 4 and w + 10
