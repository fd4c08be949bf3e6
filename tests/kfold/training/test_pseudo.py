"""Which test rows a fold takes as pseudo-labelled: above the teacher's threshold, at most the cap, each label
keeping its share of the confident rows, the most confident first."""

from __future__ import annotations

import numpy as np
import pytest

from kfold.core.errors import ConfigError
from kfold.training import pseudo_rows


def _probs(rng, n, labels, skew):
    return rng.dirichlet(np.full(labels, skew), size=n)


def test_every_row_above_the_threshold_when_they_fit_under_the_cap():
    rng = np.random.default_rng(0)
    p = _probs(rng, 200, 4, 0.3)
    rows = pseudo_rows(p, 0.9, 1000)
    assert rows.tolist() == np.flatnonzero(p.max(1) >= 0.9).tolist() and len(rows) > 20


@pytest.mark.parametrize("cap", [1, 7, 30, 61])
def test_a_cap_keeps_the_labels_shares_and_their_most_confident_rows(cap):
    rng = np.random.default_rng(1)
    p = _probs(rng, 400, 5, 0.2)
    passed = np.flatnonzero(p.max(1) >= 0.8)
    assert len(passed) > cap
    rows = pseudo_rows(p, 0.8, cap)
    assert len(rows) == cap and len(set(rows.tolist())) == cap and set(rows) <= set(passed)
    label = p.argmax(1)
    share = np.bincount(label[passed], minlength=5) / len(passed)
    got = np.bincount(label[rows], minlength=5)
    assert np.all(np.abs(got - share * cap) < 1.0)  # each label within one row of its exact share
    for c in range(5):  # within a label: nothing left out is more confident than what was taken
        taken, left = rows[label[rows] == c], np.setdiff1d(passed[label[passed] == c], rows)
        if len(taken) and len(left):
            assert p[taken].max(1).min() >= p[left].max(1).max()


def test_nothing_above_the_threshold_or_a_zero_cap_takes_nothing_and_bad_input_is_refused():
    p = np.full((5, 3), 1 / 3)
    assert pseudo_rows(p, 0.9, 10).tolist() == []
    assert pseudo_rows(np.eye(3), 0.9, 0).tolist() == []
    with pytest.raises(ConfigError, match="expected 0 < threshold <= 1"):
        pseudo_rows(p, 0.0, 3)
    with pytest.raises(ConfigError, match="expected finite"):
        pseudo_rows(np.array([[np.nan, 1.0]]), 0.5, 3)


def test_ties_go_to_the_label_with_more_rows_then_the_lower_one_and_to_the_lower_row():
    p = np.array([[.95, .05, 0], [.95, .05, 0], [.05, .95, 0], [0, .05, .95], [0, .05, .95], [0, .05, .95]])
    # shares 2/6, 1/6, 3/6 of a cap of 3: 1, 0.5, 1.5 -> floors 1, 0, 1; the one left: remainders tie (0.5, 0.5),
    # the label with more rows (label 2) takes it; within a label, equal confidence: the lower rows
    assert pseudo_rows(p, 0.9, 3).tolist() == [0, 3, 4]
    assert pseudo_rows(p, 0.9, 3.9).tolist() == [0, 3, 4]  # a cap from a share, rounded down
