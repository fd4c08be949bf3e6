"""The fake store the ensemble tests blend: three runs of one fold map with test predictions."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fakes import fake_run, noisy_member

NAMES = ("no_relation", "a", "b")


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    folds = np.arange(90) % 3
    ty = rng.integers(0, 3, 20)
    for name, skill in (("split-x-s1", 2.0), ("split-x-s2", 1.5), ("share-x-s1", 0.5)):
        fake_run(tmp_path, name, noisy_member(y, 3, skill, rng), y, folds, NAMES, noisy_member(ty, 3, skill, rng))
    return tmp_path, y
