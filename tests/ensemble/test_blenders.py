"""One contract test every blender passes, then each method on logits where the right answer is known."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from ensemble import (METHODS, CaruanaSelection, HardVote, RankAverage, SoftVote, Stacking, WeightedBlend,
                      fit_temperature, honest_oof, make_blender)
from kfold.core.metrics import softmax
from tests.fakes import noisy_member

NAMES = ["no_relation", "a", "b", "c"]


def _members(rng, skills, n=400, k=4):
    y = rng.integers(0, k, n)
    return np.stack([noisy_member(y, k, s, rng) for s in skills]), y


@pytest.mark.parametrize("method", list(METHODS))
def test_blender_contract(method):
    rng = np.random.default_rng(0)
    oof, y = _members(rng, [1.5, 1.0, 0.5])
    test = np.stack([noisy_member(rng.integers(0, 4, 50), 4, 1.0, rng) for _ in range(3)])
    blender = make_blender(method, metric="accuracy", label_names=NAMES)
    assert blender.get_params() == type(blender)(**blender.get_params()).get_params()  # __init__ only stores
    with pytest.raises(NotFittedError):
        blender.predict_proba(test)
    assert blender.fit(oof, y) is blender
    probs = blender.predict_proba(test)
    assert probs.shape == (50, 4)
    assert np.all(probs >= 0) and np.allclose(probs.sum(1), 1.0)
    assert blender.predict(test).shape == (50,)
    w = blender.member_weights()
    assert w.shape == (3,) and np.isclose(w.sum(), 1.0)
    with pytest.raises(Exception, match="fitted on 3 members"):
        blender.predict_proba(test[:2])
    with pytest.raises(Exception, match="NaN"):
        blender.predict_proba(np.where(test > 2, np.nan, test))
    honest = honest_oof(blender, oof, y, np.arange(400) % 5)
    assert honest.shape == (400, 4) and np.allclose(honest.sum(1), 1.0)


def test_caruana_picks_the_strong_member():
    rng = np.random.default_rng(1)
    oof, y = _members(rng, [0.0, 3.0, 0.0, 0.2, 0.0])
    model = CaruanaSelection(n_iter=20, metric="accuracy", label_names=NAMES).fit(oof, y)
    assert model.member_weights().argmax() == 1 and model.member_weights()[1] >= 0.5
    assert model.history_[0][0] == 1


def test_weighted_blend_puts_weight_on_informative_members():
    rng = np.random.default_rng(2)
    oof, y = _members(rng, [2.0, 0.0, 0.0, 1.5])
    for metric in ("logloss", "accuracy"):
        w = WeightedBlend(metric=metric, label_names=NAMES).fit(oof, y).member_weights()
        assert w[0] + w[3] > 0.8, (metric, w)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(4000, 5)) * 2
    y = np.array([rng.choice(5, p=p) for p in softmax(true)])
    assert fit_temperature(true * 3.0, y) == pytest.approx(3.0, rel=0.1)
    model = SoftVote(temperature=True).fit(np.stack([true * 3.0, true * 0.5]), y)
    np.testing.assert_allclose(model.temperatures_, [3.0, 0.5], rtol=0.12)


def test_stacking_recovers_a_known_linear_blend():
    rng = np.random.default_rng(4)
    z1, z2 = rng.normal(size=(2, 6000, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(2.0 * z1 - 1.0 * z2)])
    model = Stacking(Cs=(100.0,), cv=2).fit(np.stack([z1, z2]), y)
    coef = model.model_.coef_.reshape(3, 2, 3)  # class x member x feature
    # the logit of class c depends on member 1's feature c with +2 and member 2's with -1 (up to a shift)
    diag1 = np.array([coef[c, 0, c] - coef[c, 0, (c + 1) % 3] for c in range(3)])
    diag2 = np.array([coef[c, 1, c] - coef[c, 1, (c + 1) % 3] for c in range(3)])
    np.testing.assert_allclose(diag1, 2.0, atol=0.35)
    np.testing.assert_allclose(diag2, -1.0, atol=0.35)


def test_honest_score_is_lower_than_in_sample_on_noise():
    from kfold.core.metrics import score

    rng = np.random.default_rng(5)
    oof, y = _members(rng, [0.0] * 6, n=600)
    folds = np.arange(600) % 5
    for blender in (Stacking(Cs=(10.0,)), WeightedBlend(metric="accuracy", label_names=NAMES)):
        in_sample = score("accuracy", y, blender.fit(oof, y).predict_proba(oof), NAMES)
        honest = score("accuracy", y, honest_oof(blender, oof, y, folds), NAMES)
        assert honest < in_sample, type(blender).__name__
        assert abs(honest - 25.0) < 6.0  # chance level on 4 balanced labels


def test_hard_vote_majority_and_soft_tie_break():
    # rows: (1) two of three vote label 2; (2) a 1-1 tie between labels 0 and 1 (third member votes 3),
    # broken by the members' mean probabilities
    a = np.log(np.array([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1]]))
    b = np.log(np.array([[0.1, 0.1, 0.7, 0.1], [0.1, 0.6, 0.2, 0.1]]))
    c = np.log(np.array([[0.7, 0.1, 0.1, 0.1], [0.3, 0.1, 0.2, 0.4]]))
    model = HardVote().fit(np.stack([a, b, c]), np.array([2, 0]))
    assert model.predict(np.stack([a, b, c])).tolist() == [2, 0]


def test_rank_average_hand_case():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.65, 0.1, 0.25]])
    logits = np.log(probs)[None]
    got = RankAverage().fit(logits, np.array([0, 1, 2])).predict_proba(logits)
    # per label, rank the rows: label 0 -> 3,1,2; label 1 -> 2,3,1; label 2 -> 1,3,2
    ranks = np.array([[3, 2, 1], [1, 3, 3], [2, 1, 2]]) / 3
    np.testing.assert_allclose(got, ranks / ranks.sum(1, keepdims=True))


def test_ensemble_and_submissions_import_without_torch():
    import subprocess

    code = "import ensemble, submissions, ensemble.cli, sys; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
