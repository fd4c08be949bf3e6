"""The report's intervals cover what they say: simulated with a known truth (kfold.report._coverage), the scheme
the report uses for each metric holds the population's score about as often as its level says, and the scheme it
replaced (label counts held fixed) is caught undercovering."""

from __future__ import annotations

import numpy as np
import pytest

from kfold.report import scheme_for
from kfold.report._coverage import simulate_coverage


def _cells(**kw):
    # two labels predicted with very different accuracy: where fixed label counts leave out the most spread
    truth, prior = np.array([[1.0, 0.0], [0.7, 0.3]]), np.array([0.5, 0.5])
    return {(c.scheme, c.metric): c for c in simulate_coverage(truth, prior, 200, ["a", "b"], ["accuracy", "macro_f1"],
                                                                **kw)}


def test_the_reports_schemes_cover_about_95_percent_and_fixed_label_counts_undercover_accuracy():
    cells = _cells(replicates=300, resamples=400, seed=3)
    assert cells[("stratified", "accuracy")].coverage < 0.88  # the old scheme: about 81% in the large version
    for metric in ("accuracy", "macro_f1"):
        cell = cells[(scheme_for(metric), metric)]
        assert 0.90 <= cell.coverage <= 0.99, (metric, cell)
        assert cell.too_low < 0.06 and cell.too_high < 0.06, cell  # misses on both sides, not one


def test_the_simulated_truth_is_the_metric_of_the_expected_confusion_matrix():
    cells = _cells(replicates=2, resamples=20)
    assert cells[("plain", "accuracy")].truth == pytest.approx(65.0)  # 0.5 x 100% + 0.5 x 30%
    # macro-F1: label a precision 0.5/0.85, recall 1; label b precision 1, recall 0.3
    f_a, f_b = 2 * (0.5 / 0.85) / (0.5 / 0.85 + 1), 2 * 0.3 / 1.3
    assert cells[("plain", "macro_f1")].truth == pytest.approx(50 * (f_a + f_b))


def test_metrics_that_need_probabilities_are_refused():
    with pytest.raises(ValueError, match="auprc"):
        simulate_coverage(np.eye(2), np.array([0.5, 0.5]), 10, ["a", "b"], ["auprc"], replicates=1)
