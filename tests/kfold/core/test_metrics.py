"""Each metric against a hand-computed case (and AUPRC against KLUE's sklearn recipe)."""

from __future__ import annotations

import numpy as np
import pytest

from kfold.core.metrics import all_scores, metric_fn, score


def onehot(pred, k):
    return np.eye(k)[pred]


def test_accuracy_hand_case():
    assert score("accuracy", np.array([0, 1, 2, 1]), onehot([0, 2, 2, 1], 3), ["a", "b", "c"]) == pytest.approx(75.0)


def test_micro_f1_excludes_no_relation_hand_case():
    # gold non-NR rows: 1,2,3; predicted non-NR rows: 0,1,3; hits among them: rows 1 and 3 -> P = R = 2/3
    y = np.array([0, 1, 2, 1, 0])
    got = score("micro_f1", y, onehot([1, 1, 0, 1, 0], 3), ["no_relation", "b", "c"])
    assert got == pytest.approx(200 / 3)
    # with no label excluded it is plain accuracy-like micro F1 = 3/5
    assert score("micro_f1", y, onehot([1, 1, 0, 1, 0], 3), ["x", "b", "c"]) == pytest.approx(60.0)


def test_macro_f1_hand_case():
    # class 0: P 1, R .5 -> F 2/3; class 1: P 2/3, R 1 -> F .8; mean 0.7333
    got = score("macro_f1", np.array([0, 0, 1, 1]), onehot([0, 1, 1, 1], 3), ["a", "b", "c"])
    assert got == pytest.approx((2 / 3 + 0.8) / 2 * 100)


def test_semeval_official_hand_case():
    names = ["Other", "A(e1,e2)", "A(e2,e1)", "B(e1,e2)", "B(e2,e1)"]
    y = np.array([1, 1, 2, 3, 0])
    pred = np.array([1, 2, 2, 0, 3])
    # type A: 2 exact hits (wrong direction at row 2 is an error), 3 predicted, 3 gold -> F 2/3
    # type B: 0 hits, 1 predicted, 1 gold -> F 0; Other is not averaged
    assert score("semeval", y, onehot(pred, 5), names) == pytest.approx(100 / 3)


def _klue_auprc(y, probs):
    from sklearn.metrics import auc, precision_recall_curve

    scores = []
    for c in range(probs.shape[1]):
        if not (y == c).any():
            continue
        p, r, _ = precision_recall_curve((y == c).astype(int), probs[:, c])
        scores.append(auc(r, p))
    return float(np.mean(scores) * 100)


def test_auprc_matches_klue_sklearn_recipe_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    probs = rng.dirichlet(np.ones(6), 300).round(2)  # rounding creates ties; class 5 has no positives
    assert score("auprc", y, probs, list("abcdef")) == pytest.approx(_klue_auprc(y, probs), abs=1e-9)


def test_auprc_hand_case():
    # class 1: scores .8(+) .4(+) .1(-): the curve reaches recall 1 at precision 1 -> area 1
    # class 0: scores .9(+) .6(-) .2(-) -> area 1; mean 100
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert score("auprc", np.array([0, 1, 1]), probs, ["a", "b"]) == pytest.approx(100.0)
    # y = [0, 1, 0]. class 0: scores .9(+) .6(-) .2(+): points (0,1) (.5,1) (.5,.5) (1,2/3) -> .5 + .5 * (.5 + 2/3) / 2
    # class 1: scores .8(-) .4(+) .1(-): points (0,1) (0,0) (1,.5) (1,1/3) -> 1 * (0 + .5) / 2 = .25
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    expected = ((0.5 + 0.5 * (0.5 + 2 / 3) / 2) + 0.25) / 2 * 100
    assert score("auprc", np.array([0, 1, 0]), probs, ["a", "b"]) == pytest.approx(expected)
    assert _klue_auprc(np.array([0, 1, 0]), probs) == pytest.approx(expected)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("metric", ["accuracy", "micro_f1", "macro_f1", "auprc"])
def test_weighted_scores_equal_duplicated_rows(metric, ties):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 60)
    probs = rng.dirichlet(np.ones(4), 60)
    if ties:  # runs of tied scores holding positives and negatives, some rows weighted 0
        probs = probs.round(1)
    names = ["no_relation", "b", "c", "d"]
    fn = metric_fn(metric, names)
    w = rng.integers(0, 3, 60).astype(float)
    dup = np.repeat(np.arange(60), w.astype(int))
    assert fn(y, probs, w[None])[0] == pytest.approx(fn(y[dup], probs[dup]), abs=1e-9)
    assert fn(y, probs, np.ones((1, 60)))[0] == pytest.approx(fn(y, probs))


def test_all_scores_adds_semeval_only_for_directional_labels():
    y = np.array([0, 1])
    assert "semeval" not in all_scores(y, onehot([0, 1], 2), ["no_relation", "x"])
    assert "semeval" in all_scores(y, onehot([0, 1], 2), ["Other", "A(e1,e2)"])
