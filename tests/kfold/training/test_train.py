"""The training loop: accumulation, samplers, the micro-batch finder, NaN handling, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kfold.core.config import Config
from kfold.core.errors import ConfigError, TrainingError
from kfold.data._readers import read_dataset
from kfold.encoding._batching import find_micro_batch, length_grouped_batches, padding_share, sorted_batches
from kfold.encoding._encode import encode
from kfold.encoding._markers import marker_tokens
from kfold.encoding._tokenizer import load_tokenizer
from kfold.training._train import FoldData, build_model, predict, train_fold


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
    # fp32 also on a CPU with bf16 hardware, where "auto" would pick bf16: these tests compare numbers that only
    # fp32 reproduces to their tolerance
    base = dict(backbone=cfg.pop("backbone"), epochs=1, batch_size=8, lr=1e-3, dropout=0.0, warmup_ratio=0.0,
                precision="fp32")
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
    res = _train(fold_data, backbone=tiny_bert, epochs=3, metric="accuracy", average_epochs=0)
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
    from kfold.encoding._encode import Features

    feats = Features(np.zeros(int(lengths.sum()), np.int32), np.concatenate([[0], np.cumsum(lengths)]),
                     np.zeros((1003, 6), np.int32), np.zeros(1003, np.int8), lengths)
    random_batches = [rng.permutation(1003)[i : i + 16] for i in range(0, 1003, 16)]
    assert padding_share(feats, a) < 0.1 < padding_share(feats, random_batches)
    assert padding_share(feats, sorted_batches(lengths, 16)) <= padding_share(feats, a)  # a global sort pads least


@pytest.mark.parametrize("epochs", [1, 3])
def test_ema_evaluates_and_saves_the_averaged_weights_without_changing_training(fold_data, tiny_bert, epochs):
    names, tok, data = fold_data
    built = []

    def factory():
        built.append(build_model(Config(backbone=tiny_bert), len(names), len(tok)))
        return built[-1]

    def run(ema):
        cfg = Config(backbone=tiny_bert, epochs=epochs, batch_size=8, lr=1e-3, ema=ema, save_models=True, metric="accuracy",
                     average_epochs=0, precision="fp32")
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


@pytest.mark.parametrize("n", [1, 2])
def test_average_epochs_uses_the_mean_of_the_last_epochs_weights(fold_data, tiny_bert, n):
    # the raw weights at the end of each epoch are caught from the per-epoch log line (logged after the
    # epoch's evaluation, before anything else happens to the model)
    names, tok, data = fold_data
    built, ends = [], []

    def factory():
        built.append(build_model(Config(backbone=tiny_bert), len(names), len(tok)))
        return built[-1]

    def log(message):
        if " epoch " in message and built:
            ends.append({k: v.detach().clone() for k, v in built[-1].state_dict().items()})

    def run(average, logger=lambda m: None):
        cfg = Config(backbone=tiny_bert, epochs=3, batch_size=8, lr=1e-3, average_epochs=average, save_models=True,
                     precision="fp32")
        return train_fold(cfg, names, data, pad_id=tok.pad_token_id, vocab_size=len(tok), log=logger,
                          model_factory=factory)

    plain, avg = run(0), run(n, log)
    assert len(ends) == 3
    # training itself is untouched: the same epoch losses as without averaging
    assert [h["train_loss"] for h in plain.history] == [h["train_loss"] for h in avg.history[:3]]
    for key, value in avg.state_dict.items():
        expected = torch.stack([e[key].float() for e in ends[-n:]]).mean(0) if value.is_floating_point() else ends[-1][key]
        torch.testing.assert_close(value, expected.to(value.dtype), rtol=1e-5, atol=1e-6, msg=key)
    # the average is what is scored, reported as the last epoch, and predicts the test rows
    assert avg.best_epoch == 3 and avg.history[-1]["averaged_epochs"] == list(range(4 - n, 4))
    assert avg.metrics == {k: v for k, v in avg.history[-1].items() if k not in ("epoch", "averaged_epochs")}
    fresh = build_model(Config(backbone=tiny_bert), len(names), len(tok))
    fresh.load_state_dict(avg.state_dict)
    cpu = torch.device("cpu")
    np.testing.assert_allclose(predict(fresh, data.test, 64, cpu, tok.pad_token_id, None), avg.test_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict(fresh, data.valid, 64, cpu, tok.pad_token_id, None), avg.valid_logits, rtol=1e-5, atol=1e-6)
    if n == 2:
        assert not np.allclose(avg.test_logits, plain.test_logits)


@pytest.mark.parametrize("settings, message", [
    (dict(average_epochs=-1), r"average_epochs = -1: expected 0 \(off\) or a number of epochs"),
    (dict(epoch_scores=False, average_epochs=0), "epoch_scores = false: the best epoch is chosen on the per-epoch"),
    (dict(epochs=3, average_epochs=2, ema=0.99), "choose one weight average"),
])
def test_average_epochs_out_of_range_or_with_ema_is_refused(settings, message):
    assert Config(epochs=2, average_epochs=3).averaged_epochs() == range(1, 3)  # fewer epochs than N: all of them
    with pytest.raises(ConfigError, match=message):
        Config(**settings)


def test_rdrop_without_dropout_trains_like_plain_and_with_dropout_adds_a_consistency_term(fold_data, tiny_dir):
    from kfold.model._losses import rdrop_kl
    from tests.tiny import tiny_backbone

    names, tok, data = fold_data
    # no dropout anywhere: both copies of a row give the same logits, the KL term is 0 and the mean loss over
    # the doubled batch equals the plain batch's, so training follows the same path
    still = tiny_backbone("bert", tiny_dir, dropout=0.0)
    plain = _train(fold_data, backbone=still, epochs=2)
    twice = _train(fold_data, backbone=still, epochs=2, rdrop=1.0)
    np.testing.assert_allclose(twice.valid_logits, plain.valid_logits, rtol=1e-4, atol=1e-5)
    # with dropout the two passes differ, so the term is positive in training mode and 0 in evaluation
    noisy = tiny_backbone("bert", tiny_dir)  # dropout 0.1 in the encoder
    model = build_model(Config(backbone=noisy, dropout=0.3), len(names), len(tok))
    from kfold.encoding._batching import collate

    batch = {k: torch.cat([v, v]) for k, v in collate(data.train, np.arange(8), tok.pad_token_id).items()}
    torch.manual_seed(0)
    assert rdrop_kl(model.train()(**batch)["logits"]).item() > 1e-4
    with torch.no_grad():
        assert float(rdrop_kl(model.eval()(**batch)["logits"])) < 1e-10
    mixed = _train(fold_data, backbone=noisy, dropout=0.3, epochs=2, rdrop=1.0)
    assert np.isfinite(mixed.valid_logits).all()
    with pytest.raises(ConfigError, match="rdrop = -1.0"):
        Config(rdrop=-1.0)


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
                     precision=precision, device="cpu", average_epochs=0)
        res = train_fold(cfg, names, data, pad_id=tok.pad_token_id, vocab_size=len(tok), log=lambda m: None,
                         model_factory=factory)
        assert seen == {expected}
        assert res.valid_logits.dtype == np.float32 and np.isfinite(res.valid_logits).all()
        losses[precision] = np.array([h["train_loss"] for h in res.history])
        assert (np.diff(losses[precision]) < 0).all(), losses
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], atol=0.02)
    assert not np.array_equal(losses["bf16"], losses["fp32"])


@pytest.mark.parametrize("precision,kernel", [("bf16", "eager"), ("fp32", "sdpa")])
def test_train_fold_builds_the_attention_kernel_auto_picks(fold_data, tiny_bert, monkeypatch, precision, kernel):
    import kfold.training._train as train_module

    names, tok, data = fold_data
    built = []

    def spy(*args, **kwargs):
        built.append(train_module.build_model.__wrapped__(*args, **kwargs))
        return built[-1]

    spy.__wrapped__ = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", spy)
    cfg = Config(backbone=tiny_bert, epochs=1, batch_size=8, precision=precision, device="cpu")
    train_fold(cfg, names, data, pad_id=tok.pad_token_id, vocab_size=len(tok), log=lambda m: None)
    assert [m.backbone.config._attn_implementation for m in built] == [kernel]


def test_precision_auto_follows_the_cpus_bf16_hardware_and_says_so(monkeypatch):
    import kfold.training._device as train

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert "--precision auto trains in bf16" in train.precision_note("auto", cpu)
    assert train.pick_precision("auto", cpu) == torch.bfloat16
    assert train.precision_note("bf16", cpu) is None and train.precision_note("fp32", cpu) is None
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert "emulated and slower than fp32" in train.precision_note("bf16", cpu)
    assert "--precision auto trains in fp32" in train.precision_note("auto", cpu)
    assert train.pick_precision("auto", cpu) is None and train.pick_precision("bf16", cpu) == torch.bfloat16
    assert train.precision_note("bf16", cuda) is None and train.precision_note("auto", cuda) is None


def test_native_bf16_detection_agrees_with_the_cpu_flags():
    from pathlib import Path

    from kfold.training import cpu_has_native_bf16

    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(info.read_text().split())
    assert cpu_has_native_bf16() == bool({"amx_tile", "avx512_bf16"} & flags)
