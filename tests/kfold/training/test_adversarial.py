"""Adversarial training (--adversarial fgm|awp): one step against a hand computation, micro-batch independence,
exact restore when a step stops, the cost line, and the settings."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from kfold.core.config import Config
from kfold.core.errors import ConfigError
from kfold.data._readers import read_dataset
from kfold.encoding import collate
from kfold.encoding._encode import encode
from kfold.encoding._markers import marker_tokens
from kfold.encoding._tokenizer import load_tokenizer
from kfold.model import RelationLoss, param_groups
from kfold.training import FoldData, build_model, train_fold


@pytest.fixture(scope="module")
def setup(demo_dir, tiny_dir):
    """24 training rows, 16 validation rows; a tiny BERT without dropout (micro-batches then compute the same)."""
    from tests.tiny import tiny_backbone

    path = tiny_backbone("bert", tiny_dir / "nodrop", dropout=0.0)
    ds = read_dataset(demo_dir / "train.tsv")
    tok = load_tokenizer(path, marker_tokens("entity_marker_punct", []))
    feats, _ = encode(ds, tok, "entity_marker_punct", 64)
    tr, va = np.arange(0, 24), np.arange(24, 40)
    data = FoldData(feats.take(tr), ds.y[tr], feats.take(va), ds.y[va])
    cfg = Config(backbone=path, epochs=1, batch_size=24, lr=1e-3, dropout=0.0, warmup_ratio=0.0, precision="fp32",
                 average_epochs=0, save_models=True, label_smoothing=0.1, adv_start_epoch=1)
    model = build_model(cfg, len(ds.label_names), len(tok))
    return cfg, ds.label_names, tok, data, model


def _fit(setup, log=None, **changes):
    cfg, names, tok, data, model = setup
    lines = [] if log is None else log
    return train_fold(cfg.replace(**changes), names, data, pad_id=tok.pad_token_id, vocab_size=len(tok),
                      log=lines.append, model_factory=lambda: copy.deepcopy(model))


def _by_hand(setup, method: str | None, eps: float = 0.0, lr: float = 1.0) -> tuple[dict, dict]:
    """One optimizer step on the whole batch, written out: clean backward, perturb, second backward, restore,
    clip, AdamW step."""
    cfg, names, tok, data, base = setup
    model = copy.deepcopy(base)
    model.loss_fn = RelationLoss("ce", cfg.label_smoothing, cfg.focal_gamma, None)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, fused=True)
    batch = collate(data.train, np.arange(len(data.train)), tok.pad_token_id, data.y_train)
    model(**batch)["loss"].backward()
    emb = model.backbone.get_input_embeddings().weight
    weights = [p for n, p in model.named_parameters() if "weight" in n and p.grad is not None]
    saved = {id(p): p.detach().clone() for p in weights}
    with torch.no_grad():
        if method == "fgm":
            emb.add_(eps * emb.grad / emb.grad.norm())
        elif method == "awp":
            for p in weights:
                r = lr * p.grad / p.grad.norm() * p.norm()
                p.add_(torch.maximum(torch.minimum(r, eps * p.abs()), -eps * p.abs()))
    if method == "awp":
        opt.zero_grad(set_to_none=True)  # AWP: the step uses the gradient at the perturbed weights only
    if method:
        model(**batch)["loss"].backward()
        with torch.no_grad():
            for p in weights:
                p.copy_(saved[id(p)])
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}, grads


def _grads_at_clipping(monkeypatch) -> list[dict]:
    """The gradients train_fold clips and steps on, captured at its clip_grad_norm_ call (scale included, which
    AdamW's update would not show)."""
    seen, real = [], torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm):
        params = list(params)
        seen.append({id(p): p.grad.detach().clone() for p in params if p.grad is not None})
        return real(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    return seen


def _close(a: dict, b: dict) -> float:
    """The L2 distance between two models' weights (all floating-point tensors together)."""
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a if a[k].is_floating_point()) ** 0.5


@pytest.mark.parametrize("method,eps", [("fgm", 1.0), ("awp", 0.01)])
@pytest.mark.parametrize("accum", [1, 4])
def test_one_step_equals_the_hand_computation(setup, method, eps, accum, monkeypatch):
    cfg, names, tok, data, base = setup
    hand, hand_grads = _by_hand(setup, method, eps)
    plain, plain_grads = _by_hand(setup, None)
    model = copy.deepcopy(base)
    seen = _grads_at_clipping(monkeypatch)
    res = train_fold(cfg.replace(adversarial=method, grad_accum=accum), names, data, pad_id=tok.pad_token_id,
                     vocab_size=len(tok), log=lambda m: None, model_factory=lambda: model)
    assert res.accum_steps == accum and len(seen) == 1
    assert _close(res.state_dict, hand) < 1e-4
    # the gradients stepped on, scale included (AdamW's first update is nearly their sign)
    stepped = {n: seen[0][id(p)] for n, p in model.named_parameters() if id(p) in seen[0]}
    assert stepped.keys() == hand_grads.keys()
    assert _close(stepped, hand_grads) < 1e-5 * _close(hand_grads, {k: 0 * v for k, v in hand_grads.items()})
    # the perturbation changed the update and the gradient by far more than the tolerance (the comparison can fail)
    assert _close(hand, plain) > 1e-2 and _close(hand_grads, plain_grads) > 1e-3


@pytest.mark.parametrize("method", ["fgm", "awp"])
def test_the_micro_batch_split_does_not_change_the_update(setup, method):
    # one perturbation per optimizer step from the whole batch's gradient: 4 micro-batches give the weights of 1
    kw = dict(adversarial=method, epochs=2, batch_size=8, average_epochs=1)
    one, four = _fit(setup, grad_accum=1, **kw), _fit(setup, grad_accum=4, **kw)
    assert (one.micro_batch, four.micro_batch) == (8, 2)
    assert _close(one.state_dict, four.state_dict) < 1e-4
    np.testing.assert_allclose(one.valid_logits, four.valid_logits, rtol=1e-4, atol=1e-5)
    plain = _fit(setup, epochs=2, batch_size=8, average_epochs=1)
    assert _close(one.state_dict, plain.state_dict) > 1e-2


@pytest.mark.parametrize("method", ["fgm", "awp"])
def test_weights_are_restored_exactly_when_the_adversarial_pass_stops(setup, method):
    cfg, names, tok, data, base = setup
    model = copy.deepcopy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def stop_in_second_pass(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:  # clean pass of micro-batches 1-2, then the adversarial pass's first micro-batch
            raise KeyboardInterrupt

    model.register_forward_pre_hook(stop_in_second_pass, with_kwargs=True)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg.replace(adversarial=method, grad_accum=2), names, data, pad_id=tok.pad_token_id,
                   vocab_size=len(tok), log=lambda m: None, model_factory=lambda: model)
    assert len(calls) == 3
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no optimizer step was taken: bit for bit


def test_adversarial_passes_start_at_the_epoch_given_and_the_log_states_their_cost(setup):
    lines = []
    res = _fit(setup, log=lines, adversarial="fgm", epochs=2, batch_size=8, adv_start_epoch=2, average_epochs=1)
    assert res.history[0]["adv_seconds"] == 0 and res.history[1]["adv_seconds"] > 0
    epoch_lines = [line for line in lines if " epoch " in line]
    assert "fgm passes" not in epoch_lines[0]
    assert "fgm passes" in epoch_lines[1] and "x the time of the same steps without them" in epoch_lines[1]
    assert "adv_seconds" not in _fit(setup, epochs=1).history[0]


@pytest.mark.parametrize("method", ["fgm", "awp"])
def test_bf16_autocast_trains_with_either_method(setup, method):
    res = _fit(setup, adversarial=method, precision="bf16", epochs=1, batch_size=8)
    fp32 = _fit(setup, adversarial=method, precision="fp32", epochs=1, batch_size=8)
    plain = _fit(setup, precision="bf16", epochs=1, batch_size=8)
    assert np.isfinite(res.valid_logits).all() and res.history[0]["adv_seconds"] > 0
    # bf16 rounding moves the weights less than leaving the perturbation out would
    assert _close(res.state_dict, fp32.state_dict) < 0.5 * _close(plain.state_dict, fp32.state_dict)


def test_the_ema_never_sees_the_perturbed_weights(setup):
    # the EMA's first update copies the weights: after one step it must hold the clean updated weights exactly
    hand, _ = _by_hand(setup, "fgm", 1.0)
    res = _fit(setup, adversarial="fgm", ema=0.5)
    assert _close(res.state_dict, hand) < 1e-4


@pytest.mark.parametrize("method", ["fgm", "awp"])
def test_non_finite_gradients_give_no_perturbation_and_leave_the_weights_alone(setup, method):
    from kfold.training._adversarial import make_adversary

    model = copy.deepcopy(setup[4])
    adversary = make_adversary(model, method, -1, 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.backbone.get_input_embeddings().weight.grad[0, 0] = float("inf")  # an fp16 overflow
    assert adversary.attack() is False
    adversary.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    assert adversary.attack() is False  # no direction
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    assert adversary.attack() is True and not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    adversary.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_non_finite_loss_at_the_perturbed_point_stops_with_a_clear_error(setup):
    from kfold.core.errors import TrainingError

    with pytest.raises(TrainingError, match=r"fold 0 epoch 1 step 1: the fgm pass's loss is (nan|inf)"):
        _fit(setup, adversarial="fgm", adv_eps=1e30)


def test_the_probe_measures_plain_steps_so_extra_passes_are_counted_once(setup, monkeypatch):
    # the cost model multiplies the measured rate by Config.step_cost(): the probe must not measure the passes too
    from kfold.training import _probe

    seen = []

    def fake_train_fold(cfg, *args, **kwargs):
        seen.append(cfg)
        raise RuntimeError("stop")

    monkeypatch.setattr(_probe, "train_fold", fake_train_fold)
    cfg, names, tok, data, model = setup
    spec = type("Spec", (), {"label_names": names, "vocab_size": len(tok), "pad_id": tok.pad_token_id})()
    sample = type("Sample", (), {"train": data.train, "y_train": data.y_train, "valid": data.valid,
                                 "y_valid": data.y_valid})()
    with pytest.raises(RuntimeError, match="stop"):
        _probe._measure(cfg.replace(adversarial="awp", rdrop=1.0), spec, sample, model_factory=lambda *a: model)
    assert seen[0].adversarial == "none" and seen[0].rdrop == 0.0


def test_settings_are_checked_named_and_costed():
    with pytest.raises(ConfigError, match="unknown adversarial 'fmg'"):
        Config(adversarial="fmg")
    with pytest.raises(ConfigError, match="adv_eps = 0.0"):
        Config(adversarial="fgm", adv_eps=0.0)
    with pytest.raises(ConfigError, match="adv_start_epoch = -1"):
        Config(adversarial="awp", adv_start_epoch=-1)
    # 0: the method's default start (AWP after the first epoch)
    assert Config(adversarial="awp").adversarial_from() == 2 and Config(adversarial="fgm").adversarial_from() == 1
    assert Config(adversarial="awp", adv_start_epoch=1).adversarial_from() == 1
    from kfold.training import run_name

    assert run_name(Config(adversarial="awp", adv_start_epoch=2)) == "split-minilm-s1+adv=awp,adv_from=2"
    assert Config(adversarial="awp", epochs=5).step_cost() == 1.8 and Config().step_cost() == 1.0
    assert Config(adversarial="fgm", epochs=5).step_cost() == 2.0


def test_the_method_is_a_searchable_setting(tmp_path):
    from tuning._space import load_space, suggest

    path = tmp_path / "space.json"
    path.write_text('{"adversarial": {"type": "categorical", "choices": ["none", "fgm", "awp"]},'
                    ' "adv_eps": {"type": "float", "low": 0.1, "high": 2.0}}')
    space = load_space(path)

    class Trial:
        def suggest_categorical(self, name, choices):
            return choices[-1]

        def suggest_float(self, name, low, high, log=False):
            return high

    params = suggest(Trial(), space)
    assert params["adversarial"] == "awp" and params["adv_eps"] == 2.0
    Config().replace(**{k: v for k, v in params.items()})
    path.write_text('{"adversarial": {"type": "categorical", "choices": ["fgm", "pgd"]}}')
    with pytest.raises(ConfigError, match="choice 'pgd' is not a valid adversarial"):
        load_space(path)
