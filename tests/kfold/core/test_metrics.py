"""Each metric against a hand-computed case (and AUPRC against KLUE's sklearn recipe)."""

from __future__ import annotations

import numpy as np
import pytest

from kfold.core.errors import ConfigError
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
    # no no-relation label among the names: refused (never accuracy under micro_f1's name), unless one is named
    with pytest.raises(ConfigError, match=r"micro_f1 leaves out the no-relation label.*--no-relation NAME"):
        score("micro_f1", y, onehot([1, 1, 0, 1, 0], 3), ["x", "b", "c"])
    assert score("micro_f1", y, onehot([1, 1, 0, 1, 0], 3), ["x", "b", "c"], no_relation="x") == pytest.approx(200 / 3)


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


def test_micro_f1_and_auprc_equal_the_official_klue_functions():
    """Fixtures: 12 random prediction sets over KLUE's 30 labels (every label among the gold labels; scores rounded
    to 1-3 decimals, so many ties; two sets predict no_relation everywhere), scored once with the official
    ``klue_re_micro_f1`` and ``klue_re_auprc`` of KLUE-baseline (klue_baseline/metrics/functional.py, commit
    443c38b; scikit-learn 1.9.1). The official code is not copied here: no licence was found with it."""
    from pathlib import Path

    z = np.load(Path(__file__).with_name("klue_official.npz"))
    names = [str(n) for n in z["label_names"]]
    for i in range(len(z["micro_f1"])):
        a, b = z["offsets"][i], z["offsets"][i + 1]
        y, probs = z["labels"][a:b].astype(np.int64), z["probs"][a:b]
        assert len(np.unique(y)) == 30
        assert score("micro_f1", y, probs, names) == pytest.approx(z["micro_f1"][i], rel=1e-12, abs=1e-12)
        assert score("auprc", y, probs, names) == pytest.approx(z["auprc"][i], rel=1e-12, abs=1e-12)
    assert (z["micro_f1"][8:10] == 0).all()  # the all-no_relation sets


def test_auprc_over_the_labels_present_and_says_how_many():
    from sklearn.metrics import auc, precision_recall_curve

    from kfold.core.metrics import auprc_labels, format_scores, metric_name

    rng = np.random.default_rng(3)
    y = rng.choice([0, 1, 3], 80)  # labels 2 and 4 absent
    probs = rng.dirichlet(np.ones(5), 80)
    present = [c for c in range(5) if (y == c).any()]
    by_hand = np.mean([auc(*precision_recall_curve(y == c, probs[:, c])[1::-1]) for c in present]) * 100
    assert score("auprc", y, probs, list("abcde")) == pytest.approx(by_hand)
    assert auprc_labels(y, 5) == (3, 5)
    assert metric_name("auprc", (3, 5)) == "auprc (over 3/5 labels)" and metric_name("accuracy", (3, 5)) == "accuracy"
    assert format_scores({"accuracy": 50.0, "auprc": 61.234}, (3, 5)) == "accuracy 50.00 auprc 61.23 (over 3/5 labels)"


def test_micro_f1_column_is_left_out_without_a_no_relation_label_and_a_wrong_name_is_refused():
    y, probs = np.array([0, 1, 2]), np.eye(3)
    assert "micro_f1" not in all_scores(y, probs, ["A", "B", "NR"])
    assert all_scores(y, probs, ["A", "B", "NR"], no_relation="NR")["micro_f1"] == pytest.approx(100.0)
    with pytest.raises(ConfigError, match=r"--no-relation 'none_such' is not one of the labels \[A, B, NR\]"):
        metric_fn("micro_f1", ["A", "B", "NR"], "none_such")
