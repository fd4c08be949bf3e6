"""Pseudo-label teachers: per fold, the probabilities of models that never saw that fold (a run's fold model, a
blend's fit without the fold), for the refit all of them; refusals in one line."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble import fold_fits, load_members, load_teachers, make_blender, select_runs
from ensemble.cli import main
from kfold.core.errors import ConfigError
from kfold.core.metrics import softmax
from kfold.core.store import REFIT, Predictions, RunDir, save_predictions
from tests.fakes import fake_run, noisy_member

NAMES = ("no_relation", "a", "b")
K = 3


def _teacher_run(workdir, name, rng, y, ty, *, fold_map="f" * 64, refit=False, test_ids=None):
    folds = np.arange(len(y)) % K
    per_fold = np.stack([noisy_member(ty, 3, 1.5, rng) for _ in range(K)])
    run = fake_run(workdir, name, noisy_member(y, 3, 1.5, rng), y, folds, NAMES, per_fold.mean(0),
                   fold_map_hash=fold_map, test_ids=test_ids)
    test = Predictions(np.array(test_ids if test_ids is not None else [f"t{i}" for i in range(len(ty))]), NAMES,
                       per_fold.mean(0), fold_map, None, None, per_fold)
    save_predictions(run.test_path, test)  # as kfold run writes it: each fold model's test logits kept
    if refit:
        run.write_fold(REFIT, None, Predictions(test.ids, NAMES, noisy_member(ty, 3, 2.0, rng), fold_map), {"n": 1})
    return run, per_fold


@pytest.fixture
def teachers(tmp_path):
    rng = np.random.default_rng(0)
    y, ty = rng.integers(0, 3, 90), rng.integers(0, 3, 20)
    a, za = _teacher_run(tmp_path, "split-a", rng, y, ty)
    b, zb = _teacher_run(tmp_path, "split-b", rng, y, ty, refit=True)
    return tmp_path, {"split-a": za, "split-b": zb}


def test_a_run_teaches_fold_k_with_its_fold_k_model_and_the_refit_with_its_refit_or_fold_mean(teachers):
    workdir, z = teachers
    t = load_teachers(["split-a"], workdir)
    assert sorted(t.fold_probs) == [0, 1, 2]
    for k in range(K):
        np.testing.assert_allclose(t.fold_probs[k], softmax(z["split-a"][k]), rtol=1e-6)
    np.testing.assert_allclose(t.full_probs, softmax(z["split-a"].mean(0)), rtol=1e-5)  # no refit: the fold mean
    b = load_teachers(["split-b"], workdir)
    refit = RunDir(workdir / "runs" / "split-b").fold_dir(REFIT) / "test.npz"
    from kfold.core.store import load_predictions

    np.testing.assert_allclose(b.full_probs, softmax(load_predictions(refit).logits), rtol=1e-6)
    both = load_teachers(["split-a", "split-b"], workdir)
    np.testing.assert_allclose(both.fold_probs[1], (t.fold_probs[1] + b.fold_probs[1]) / 2, rtol=1e-6)
    assert both.digest != t.digest and t.digest == load_teachers(["split-a"], workdir).digest


def test_a_blend_teaches_fold_k_with_its_fit_that_never_saw_fold_k(teachers):
    workdir, z = teachers
    out = workdir / "w.csv"
    assert main(["blend", "--workdir", str(workdir), "--method", "weighted", "--format", "klue", "--out", str(out),
                 "--test-source", "folds"]) == 0
    t = load_teachers([str(out)], workdir)
    members = load_members(select_runs(workdir, "all"), test_source="folds")
    fits = fold_fits(make_blender("weighted", label_names=list(NAMES)), members.oof, members.y, members.folds)
    for k in range(K):
        logits = np.stack([z[name][k] for name in members.names])
        np.testing.assert_allclose(t.fold_probs[k], fits[k].predict_proba(logits), rtol=1e-6)
    assert load_teachers([str(out) + ".manifest.json"], workdir).digest == t.digest  # the manifest names it too


def test_teachers_that_cannot_teach_are_refused_in_one_line(teachers, tmp_path):
    workdir, _ = teachers
    rng = np.random.default_rng(1)
    y, ty = rng.integers(0, 3, 90), rng.integers(0, 3, 20)
    fake_run(workdir, "no-test", noisy_member(y, 3, 1, rng), y, np.arange(90) % K, NAMES)
    with pytest.raises(ConfigError, match=r"^--pseudo-from no-test: run 'no-test' was trained without a test file"):
        load_teachers(["no-test"], workdir)
    fake_run(workdir, "old", noisy_member(y, 3, 1, rng), y, np.arange(90) % K, NAMES, noisy_member(ty, 3, 1, rng))
    with pytest.raises(ConfigError, match=r"old/test\.npz: field 'fold_logits': missing"):
        load_teachers(["old"], workdir)
    with pytest.raises(ConfigError, match=r"^--pseudo-from nobody: no complete run 'nobody'"):
        load_teachers(["nobody"], workdir)
    _teacher_run(workdir, "other-map", rng, y, ty, fold_map="e" * 64)
    with pytest.raises(ConfigError, match=r"^--pseudo-from other-map: fold map eeeeeeeeeeee, not ffffffffffff"):
        load_teachers(["split-a", "other-map"], workdir)
    _teacher_run(workdir, "other-test", rng, y, ty, test_ids=[f"u{i}" for i in range(20)])
    with pytest.raises(ConfigError, match=r"^--pseudo-from other-test: than 'split-a': another test file"):
        load_teachers(["split-a", "other-test"], workdir)


def test_a_blend_of_refits_teaches_the_refit_with_its_full_fit_and_rank_or_vote_blends_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    y, ty = rng.integers(0, 3, 90), rng.integers(0, 3, 20)
    _teacher_run(tmp_path, "split-a", rng, y, ty, refit=True)
    _teacher_run(tmp_path, "split-b", rng, y, ty, refit=True)
    out = tmp_path / "s.csv"
    assert main(["blend", "--workdir", str(tmp_path), "--method", "soft", "--format", "klue", "--out", str(out),
                 "--test-source", "refit"]) == 0
    t = load_teachers([str(out)], tmp_path)
    members = load_members(select_runs(tmp_path, "all"), test_source="refit")
    np.testing.assert_allclose(t.full_probs, np.mean([softmax(z) for z in members.test], 0), rtol=1e-6)  # soft: the mean
    for method, what in (("rank", "normalised mean ranks"), ("hard", "vote shares")):
        out = tmp_path / f"{method}.csv"
        assert main(["blend", "--workdir", str(tmp_path), "--method", method, "--format", "klue", "--out", str(out)]) == 0
        with pytest.raises(ConfigError, match=rf"field 'method': {method} blends give {what}, not probabilities"):
            load_teachers([str(out)], tmp_path)
