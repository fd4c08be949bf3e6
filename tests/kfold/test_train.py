"""The training loop: accumulation, samplers, the micro-batch finder, NaN handling, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kfold._batching import find_micro_batch, length_grouped_batches, padding_share, sorted_batches
from kfold._config import Config
from kfold._encode import encode
from kfold._errors import ConfigError, TrainingError
from kfold._markers import marker_tokens
from kfold._models import load_tokenizer
from kfold._readers import read_dataset
from kfold._train import FoldData, _param_groups, build_model, predict, train_fold, weight_average


@pytest.fixture(scope="module")
def fold_data(demo_dir, tiny_bert):
    ds = read_dataset(demo_dir / "train.tsv")
    tok = load_tokenizer(tiny_bert, marker_tokens("entity_marker_punct", []))
    feats, _ = encode(ds, tok, "entity_marker_punct", 64)
    y = ds.y
    tr, va = np.arange(0, 90), np.arange(90, 120)
    return ds.label_names, tok, FoldData(feats.take(tr), y[tr], feats.take(va), y[va], feats.take(va))


def _train(fold_data, **cfg):
    names, tok, data = fold_data
    base = dict(backbone=cfg.pop("backbone"), epochs=1, batch_size=8, lr=1e-3, dropout=0.0, warmup_ratio=0.0)
    base.update(cfg)
    return train_fold(Config(**base), names, data, pad_id=tok.pad_token_id, vocab_size=len(tok), log=lambda m: None)


def test_gradient_accumulation_matches_full_batches(fold_data, tiny_dir):
    # 90 rows in batches of 8: 11 full batches and a last batch of 2; with grad_accum=3 each batch is
    # split into micro-batches of 3,3,2 (and the last one into 2). Same updates -> same logits.
    # (dropout off everywhere: micro-batches draw dropout masks of other shapes)
    from tests.tiny import tiny_backbone

    path = tiny_backbone("bert", tiny_dir, dropout=0.0)
    full = _train(fold_data, backbone=path, grad_accum=1, epochs=2)
    accum = _train(fold_data, backbone=path, grad_accum=3, epochs=2)
    assert (full.micro_batch, accum.micro_batch, accum.accum_steps) == (8, 3, 3)
    np.testing.assert_allclose(full.valid_logits, accum.valid_logits, rtol=1e-4, atol=1e-5)


def test_training_is_bitwise_reproducible_and_seed_sensitive(fold_data, tiny_bert):
    a = _train(fold_data, backbone=tiny_bert, seed=3)
    b = _train(fold_data, backbone=tiny_bert, seed=3)
    c = _train(fold_data, backbone=tiny_bert, seed=4)
    assert np.array_equal(a.valid_logits, b.valid_logits) and np.array_equal(a.test_logits, b.test_logits)
    assert not np.array_equal(a.valid_logits, c.valid_logits)
    assert a.valid_logits.dtype == np.float32


def test_best_epoch_selected_on_validation_and_history_kept(fold_data, tiny_bert):
    res = _train(fold_data, backbone=tiny_bert, epochs=3, metric="accuracy")
    assert len(res.history) == 3
    best = max(range(3), key=lambda i: (res.history[i]["accuracy"], -i))
    assert res.best_epoch == best + 1
    assert res.metrics["accuracy"] == res.history[best]["accuracy"]


def test_nan_loss_stops_with_a_clear_error(fold_data, tiny_bert):
    names, tok, data = fold_data

    def factory():
        model = build_model(Config(backbone=tiny_bert), len(names), len(tok))
        with torch.no_grad():
            model.classifier[-1].weight.fill_(float("nan"))
        return model

    with pytest.raises(TrainingError, match=r"fold 0 epoch 1 step 1: loss is nan"):
        train_fold(Config(backbone=tiny_bert, epochs=1, batch_size=8), names, data, pad_id=tok.pad_token_id,
                   vocab_size=len(tok), log=lambda m: None, model_factory=factory)


def test_auto_micro_batch_on_simulated_oom(fold_data, tiny_bert, monkeypatch):
    """A model that 'runs out of memory' above 4 rows: the finder settles on 4 and accumulates to 8."""
    names, tok, data = fold_data

    def factory():
        model = build_model(Config(backbone=tiny_bert), len(names), len(tok))
        forward = model.forward

        def limited(input_ids, *args, **kwargs):
            if input_ids.shape[0] > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return forward(input_ids, *args, **kwargs)

        model.forward = limited
        return model

    res = train_fold(Config(backbone=tiny_bert, epochs=1, batch_size=8, auto_micro_batch=True, dropout=0.0), names, data,
                     pad_id=tok.pad_token_id, vocab_size=len(tok), log=lambda m: None, model_factory=factory)
    assert (res.micro_batch, res.accum_steps) == (4, 2)


def test_micro_batch_finder():
    tried = []

    def step(m):
        tried.append(m)
        if m > 5:
            raise RuntimeError("CUDA out of memory. Tried to allocate")

    assert find_micro_batch(32, step) == 4 and tried == [32, 16, 8, 4]
    with pytest.raises(TrainingError, match="micro-batch of 1"):
        find_micro_batch(4, lambda m: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(ValueError):  # other errors are not swallowed
        find_micro_batch(4, lambda m: (_ for _ in ()).throw(ValueError("shape mismatch")))


def test_length_grouped_batches_cover_every_example_once_and_are_reproducible():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, 1003)
    a = length_grouped_batches(lengths, 16, seed=1)
    b = length_grouped_batches(lengths, 16, seed=1)
    c = length_grouped_batches(lengths, 16, seed=2)
    flat = np.concatenate(a)
    assert sorted(flat.tolist()) == list(range(1003))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(c), flat)
    assert max(len(x) for x in a) == 16
    # grouping keeps padding low compared with random batches
    from kfold._encode import Features

    feats = Features(np.zeros(int(lengths.sum()), np.int32), np.concatenate([[0], np.cumsum(lengths)]),
                     np.zeros((1003, 6), np.int32), np.zeros(1003, bool))
    random_batches = [rng.permutation(1003)[i : i + 16] for i in range(0, 1003, 16)]
    assert padding_share(feats, a) < 0.1 < padding_share(feats, random_batches)
    assert padding_share(feats, sorted_batches(lengths, 16)) <= padding_share(feats, a)  # a global sort pads least


def test_no_weight_decay_on_bias_and_layernorm(tiny_bert):
    model = build_model(Config(backbone=tiny_bert), 3, None)
    groups = _param_groups(model, Config(backbone=tiny_bert, weight_decay=0.05, head_lr=1e-3))
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, p in model.named_parameters():
        is_norm_or_bias = name.endswith("bias") or "LayerNorm" in name
        assert (id(p) in no_decay) == is_norm_or_bias, name
    head = {id(p) for p in model.head_parameters()}
    assert all(g["lr"] == 1e-3 for g in groups if id(g["params"][0]) in head)


def test_weight_average_is_an_exponential_moving_average_of_parameters_only():
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
    assert weight_average(model, 0.0) is None


@pytest.mark.parametrize("epochs", [1, 3])
def test_ema_evaluates_and_saves_the_averaged_weights_without_changing_training(fold_data, tiny_bert, epochs):
    names, tok, data = fold_data
    built = []

    def factory():
        built.append(build_model(Config(backbone=tiny_bert), len(names), len(tok)))
        return built[-1]

    def run(ema):
        cfg = Config(backbone=tiny_bert, epochs=epochs, batch_size=8, lr=1e-3, ema=ema, save_models=True, metric="accuracy")
        return train_fold(cfg, names, data, pad_id=tok.pad_token_id, vocab_size=len(tok), log=lambda m: None,
                          model_factory=factory)

    plain, ema = run(0.0), run(0.9)
    # the raw weights follow the same trajectory (same training losses): the average is a bystander
    assert [h["train_loss"] for h in plain.history] == [h["train_loss"] for h in ema.history]
    # ... but what is evaluated, used for the test logits and saved is the average
    assert not np.array_equal(plain.test_logits, ema.test_logits)
    assert any(not torch.equal(v, plain.state_dict[k]) for k, v in ema.state_dict.items())
    fresh = build_model(Config(backbone=tiny_bert), len(names), len(tok))
    fresh.load_state_dict(ema.state_dict)
    np.testing.assert_allclose(predict(fresh, data.test, 64, torch.device("cpu"), tok.pad_token_id, None),
                               ema.test_logits, rtol=1e-5, atol=1e-6)
    assert ema.metrics["accuracy"] == ema.history[ema.best_epoch - 1]["accuracy"]


def test_ema_must_be_a_decay_below_one():
    with pytest.raises(ConfigError, match=r"ema = 1.0: expected 0 \(off\) or a decay 0 < x < 1"):
        Config(ema=1.0)


def test_cpu_bf16_computes_in_bf16_learns_like_fp32_and_keeps_float32_logits(fold_data, tiny_bert):
    # bf16 autocast on the CPU (fast where the CPU has AMX): the backbone's matrix products run in bf16,
    # the epoch losses fall and stay close to fp32's, and the stored logits are float32 either way
    names, tok, data = fold_data
    losses = {}
    for precision, expected in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        seen: set = set()

        def factory():
            model = build_model(Config(backbone=tiny_bert, dropout=0.0), len(names), len(tok))
            first = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear))
            first.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
            return model

        cfg = Config(backbone=tiny_bert, epochs=3, batch_size=8, lr=1e-3, dropout=0.0, warmup_ratio=0.0,
                     precision=precision, device="cpu")
        res = train_fold(cfg, names, data, pad_id=tok.pad_token_id, vocab_size=len(tok), log=lambda m: None,
                         model_factory=factory)
        assert seen == {expected}
        assert res.valid_logits.dtype == np.float32 and np.isfinite(res.valid_logits).all()
        losses[precision] = np.array([h["train_loss"] for h in res.history])
        assert (np.diff(losses[precision]) < 0).all(), losses
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], atol=0.02)
    assert not np.array_equal(losses["bf16"], losses["fp32"])


def test_precision_note_names_the_faster_or_slower_choice(monkeypatch):
    import kfold._train as train

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert "--precision bf16 trains faster" in train.precision_note("auto", cpu)
    assert train.precision_note("bf16", cpu) is None and train.precision_note("fp32", cpu) is None
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert "emulated and slower than fp32" in train.precision_note("bf16", cpu)
    assert train.precision_note("auto", cpu) is None
    assert train.precision_note("bf16", cuda) is None and train.precision_note("auto", cuda) is None


def test_native_bf16_detection_agrees_with_the_cpu_flags():
    from pathlib import Path

    from kfold._train import cpu_has_native_bf16

    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(info.read_text().split())
    assert cpu_has_native_bf16() == bool({"amx_tile", "avx512_bf16"} & flags)
