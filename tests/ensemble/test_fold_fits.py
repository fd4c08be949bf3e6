"""A blend's fits kept per fold: every method's fitted parameters make a blender that predicts exactly as the one
they came from; `ensemble blend` keeps them in the manifest (on all rows, and per fold without that fold), and
`blend_fits` gives them back, or recomputes them for a manifest written before they were kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ensemble import METHODS, blend_fits, load_members, make_blender, select_runs
from ensemble.cli import main
from kfold.core.errors import ConfigError
from kfold.core.store import load_predictions
from tests.fakes import noisy_member


def _logits(n=120, labels=3, members=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels, n)
    return np.stack([noisy_member(y, labels, skill, rng) for skill in (2.0, 1.0, 0.3)[:members]]), y


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("labels", [3, 2])
def test_fitted_params_through_json_predict_exactly_as_the_fitted_blender(method, labels):
    z, y = _logits(labels=labels)
    blender = make_blender(method, metric="accuracy", label_names=[str(i) for i in range(labels)],
                           temperature=method == "soft")
    fitted = blender.fit(z[:, :80], y[:80])
    params = json.loads(json.dumps(fitted.fitted_params()))
    again = make_blender(method, metric="accuracy", label_names=[str(i) for i in range(labels)],
                         temperature=method == "soft").with_fitted(params)
    assert np.array_equal(again.predict_proba(z[:, 80:]), fitted.predict_proba(z[:, 80:]))
    assert np.allclose(again.member_weights(), fitted.member_weights(), rtol=1e-12, atol=1e-15)


def test_a_stacker_fit_on_one_label_keeps_its_constant_prediction():
    z, _ = _logits()
    fitted = make_blender("stack").fit(z[:, :30], np.full(30, 2))
    again = make_blender("stack").with_fitted(json.loads(json.dumps(fitted.fitted_params())))
    assert np.array_equal(again.predict_proba(z[:, 30:]), fitted.predict_proba(z[:, 30:]))


@pytest.mark.parametrize("method", ["weighted", "stack", "caruana"])
def test_the_manifest_keeps_each_folds_fit_and_they_give_the_blends_honest_oof(store, method):
    store, _ = store
    out = store / f"{method}.csv"
    assert main(["blend", "--workdir", str(store), "--method", method, "--format", "klue", "--out", str(out)]) == 0
    manifest_path = store / f"{method}.csv.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert sorted(manifest["fold_params"]) == ["0", "1", "2"] and manifest["fitted_params"]["n_members"] == 3
    members = load_members(select_runs(store, "all"))
    full, per_fold = blend_fits(manifest_path, members)
    assert sorted(per_fold) == [0, 1, 2]
    honest = np.zeros((90, 3))
    for f, fit in per_fold.items():  # fold f's rows predicted by the fit that never saw them
        honest[members.folds == f] = fit.predict_proba(members.oof[:, members.folds == f])
    written = load_predictions(store / f"{method}.csv.oof.npz")  # the blend's honest OOF, as log-probabilities
    np.testing.assert_allclose(np.log(np.clip(honest, 1e-12, None)), written.logits, rtol=1e-5, atol=1e-5)
    assert np.allclose(full.member_weights(), [manifest["weights"][n] for n in members.names])


def test_a_manifest_written_before_is_recomputed_and_checked_against_its_weights(store):
    store, _ = store
    out = store / "w.csv"
    assert main(["blend", "--workdir", str(store), "--method", "weighted", "--format", "klue", "--out", str(out)]) == 0
    path = store / "w.csv.manifest.json"
    manifest = json.loads(path.read_text())
    members = load_members(select_runs(store, "all"))
    _, kept = blend_fits(path, members)
    old = {k: v for k, v in manifest.items() if k not in ("fold_params", "fitted_params")}
    path.write_text(json.dumps(old))
    _, recomputed = blend_fits(path, members)
    for f in kept:
        assert np.array_equal(kept[f].predict_proba(members.oof), recomputed[f].predict_proba(members.oof))
    old["weights"] = {n: 1.0 / 3 for n in members.names}  # not what these members give
    path.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"w\.csv\.manifest\.json: field 'weights': this blend, recomputed"):
        blend_fits(path, members)


def test_other_members_or_another_fold_map_are_refused_in_one_line(store):
    store, _ = store
    assert main(["blend", "--workdir", str(store), "--method", "soft", "--format", "klue",
                 "--out", str(store / "s.csv")]) == 0
    path = store / "s.csv.manifest.json"
    with pytest.raises(ConfigError, match=r"s\.csv\.manifest\.json: field 'members': the blend's members are"):
        blend_fits(path, load_members(select_runs(store, "split-*")))
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "fold_map_hash": "e" * 64}))
    with pytest.raises(ConfigError, match=r"field 'fold_map_hash': the blend was fit over fold map eeeeeeeeeeee"):
        blend_fits(path, load_members(select_runs(store, "all")))


@pytest.mark.parametrize("old", [False, True])
def test_a_member_retrained_under_its_name_is_refused_even_where_weights_are_uniform(store, old):
    from kfold.core.store import RunDir, load_predictions, save_predictions

    workdir, _ = store
    assert main(["blend", "--workdir", str(workdir), "--method", "soft", "--format", "klue",
                 "--out", str(workdir / "s.csv")]) == 0
    path = workdir / "s.csv.manifest.json"
    if old:  # a manifest from before the members' digest and the fits were kept
        manifest = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in manifest.items()
                                    if k not in ("members_sha256", "fold_params", "fitted_params")}))
    run = RunDir(workdir / "runs" / "split-x-s2")
    oof = load_predictions(run.oof_path)
    oof.logits = oof.logits[:, ::-1].copy()  # retrained: other predictions, same name, same fold map
    save_predictions(run.oof_path, oof)
    field = "member_oof_scores" if old else "members_sha256"
    with pytest.raises(ConfigError, match=rf"field '{field}': a member's predictions changed since the blend was made"):
        blend_fits(path, load_members(select_runs(workdir, "all")))


@pytest.mark.parametrize("change, field", [({"members": []}, "members"), ({"params": None}, "params"),
                                           ({"fold_params": {"0": {"n_members": 3}}}, "fold_params"),
                                           ({"method": "median"}, "method")])
def test_a_manifest_that_lacks_what_is_needed_is_refused_in_one_line(store, change, field):
    workdir, _ = store
    assert main(["blend", "--workdir", str(workdir), "--method", "weighted", "--format", "klue",
                 "--out", str(workdir / "w.csv")]) == 0
    path = workdir / "w.csv.manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ConfigError, match=rf"w\.csv\.manifest\.json: field '{field}': "):
        blend_fits(path, load_members(select_runs(workdir, "all")))
