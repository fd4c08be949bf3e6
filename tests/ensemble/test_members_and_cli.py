"""Member selection and checks (joined on ids), and `ensemble blend` / `compare` end to end on a fake store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ensemble import load_members, select_runs
from ensemble.cli import main
from kfold.core.errors import ConfigError, StoreError
from submissions import check_submission
from tests.fakes import fake_run, noisy_member

NAMES = ("no_relation", "a", "b")


def test_select_by_all_glob_and_list(store):
    workdir, _ = store
    assert [r.name for r in select_runs(workdir, "all")] == ["share-x-s1", "split-x-s1", "split-x-s2"]
    assert [r.name for r in select_runs(workdir, "split-*")] == ["split-x-s1", "split-x-s2"]
    assert [r.name for r in select_runs(workdir, "share-x-s1,split-x-s2")] == ["share-x-s1", "split-x-s2"]
    with pytest.raises(ConfigError, match="'splt-\\*' matches no run"):
        select_runs(workdir, "splt-*")


def test_members_are_joined_on_ids_not_row_order(store, tmp_path):
    workdir, y = store
    rng = np.random.default_rng(1)
    z = noisy_member(y, 3, 2.0, rng)
    perm = rng.permutation(90)
    ids = np.array([f"id{i}" for i in range(90)])
    fake_run(workdir, "shuffled", z[perm], y[perm], (np.arange(90) % 3)[perm], NAMES, noisy_member(y[:20], 3, 1, rng),
             ids=ids[perm])
    members = load_members(select_runs(workdir, "split-x-s1,shuffled"))
    assert np.array_equal(members.ids, ids)
    np.testing.assert_array_equal(members.oof[1], z)


@pytest.mark.parametrize("kind,pattern", [
    ("labels", "field 'label_names': member 'odd'"),
    ("fold_map", "field 'fold_map_hash': member 'odd' has fold map eeeeeeeeeeee"),
    ("ids", "field 'ids': other OOF ids than the first member"),
    ("test_ids", "field 'ids': other test ids"),
])
def test_mismatched_members_are_refused_naming_the_member(store, kind, pattern):
    workdir, y = store
    rng = np.random.default_rng(2)
    kwargs = {}
    names = NAMES
    if kind == "labels":
        names = ("no_relation", "b", "a")
    elif kind == "fold_map":
        kwargs["fold_map_hash"] = "e" * 64
    elif kind == "ids":
        kwargs["ids"] = np.array([f"other{i}" for i in range(90)])
    else:
        kwargs["test_ids"] = np.array([f"u{i}" for i in range(20)])
    fake_run(workdir, "odd", noisy_member(y, 3, 1, rng), y, np.arange(90) % 3, names, noisy_member(y[:20], 3, 1, rng), **kwargs)
    with pytest.raises(StoreError, match=pattern):
        load_members(select_runs(workdir, "split-x-s1,odd"))


def test_blend_writes_validated_file_and_manifest_and_refuses_overwrite(store, capsys):
    workdir, _ = store
    out = workdir / "sub.csv"
    assert main(["blend", "--workdir", str(workdir), "--method", "weighted", "--format", "klue", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "blend honest OOF accuracy (nested CV over the fold map)" in text and "gain" in text
    ids = [f"t{i}" for i in range(20)]
    assert check_submission(out, "klue", ids, NAMES) == 20
    manifest = json.loads((workdir / "sub.csv.manifest.json").read_text())
    assert manifest["members"] == ["share-x-s1", "split-x-s1", "split-x-s2"]
    assert manifest["fold_map_hash"] == "f" * 64 and manifest["method"] == "weighted"
    assert set(manifest["weights"]) == set(manifest["members"]) and abs(sum(manifest["weights"].values()) - 1) < 1e-9
    assert manifest["honest_oof_score"] <= manifest["in_sample_oof_score"] + 1e-9
    before = out.read_bytes()
    assert main(["blend", "--workdir", str(workdir), "--method", "soft", "--format", "klue", "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["blend", "--workdir", str(workdir), "--method", "soft", "--format", "klue", "--out", str(out), "--force"]) == 0
    assert json.loads((workdir / "sub.csv.manifest.json").read_text())["method"] == "soft"


def test_compare_prints_every_method(store, capsys):
    workdir, _ = store
    assert main(["compare", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    for method in ("soft", "weighted", "caruana", "rank", "hard", "stack"):
        assert f"\n{method} " in out
    assert "best single run: split-x-s1" in out


def test_check_scores_a_file_against_a_labelled_test_file(tmp_path, demo_dir, capsys):
    from kfold.data._readers import read_dataset
    from submissions import write_submission

    gold = read_dataset(demo_dir / "test_gold.tsv", role="test")
    probs = np.eye(len(gold.label_names))[gold.y]
    probs[:3] = np.roll(probs[:3], 1, axis=1)  # three wrong answers out of 30
    write_submission(tmp_path / "s.csv", "pstage2", [ex.id for ex in gold.examples], gold.label_names, probs)
    assert main(["check", str(tmp_path / "s.csv"), "--format", "pstage2", "--test", str(demo_dir / "test_gold.tsv")]) == 0
    out = capsys.readouterr().out
    assert "valid pstage2 file, 30 rows" in out and "accuracy 90.00" in out and "logloss" not in out


def test_compare_refuses_unknown_methods(store, capsys):
    workdir, _ = store
    assert main(["compare", "--workdir", str(workdir), "--methods", "soft,avg"]) == 2
    assert "unknown method 'avg'" in capsys.readouterr().err


def test_choose_method_takes_the_best_honest_score_and_the_simpler_on_a_near_tie():
    from ensemble._honest import SIMPLICITY, TIE, choose_method

    assert choose_method({"soft": 80.0, "weighted": 80.4, "stack": 81.0}, "accuracy") == "stack"
    assert choose_method({"soft": 80.96, "weighted": 81.0, "stack": 80.99}, "accuracy") == "soft"  # within 0.05
    assert choose_method({"soft": 80.0, "weighted": 80.0 + TIE + 0.01}, "accuracy") == "weighted"
    assert choose_method({"soft": 0.60, "stack": 0.50}, "logloss") == "stack"  # lower is better
    assert choose_method({"caruana": 70.0, "hard": 70.0}, "accuracy") == "hard"
    assert SIMPLICITY[0] == "soft" and SIMPLICITY[-1] == "stack"


def test_blend_method_best_writes_the_method_compare_chooses(store, capsys):
    workdir, _ = store
    assert main(["compare", "--workdir", str(workdir)]) == 0
    chosen = [line for line in capsys.readouterr().out.splitlines() if line.startswith("chosen: ")]
    assert len(chosen) == 1
    out = workdir / "best.csv"
    assert main(["blend", "--workdir", str(workdir), "--method", "best", "--out", str(out), "--format", "generic"]) == 0
    manifest = json.loads(out.with_name("best.csv.manifest.json").read_text())
    assert manifest["method"] == chosen[0].split()[1]
    oof = np.load(out.with_name("best.csv.oof.npz"))  # the blend's honest OOF predictions, in the store's schema
    assert oof["logits"].shape == (90, 3) and np.allclose(np.exp(oof["logits"]).sum(1), 1, atol=1e-4)


def test_micro_f1_as_the_blend_metric_needs_a_no_relation_label(tmp_path, capsys):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 60)
    for name in ("a-x-s1", "b-x-s1"):
        fake_run(tmp_path, name, noisy_member(y, 3, 1.5, rng), y, np.arange(60) % 3, ("A", "B", "NR"),
                 noisy_member(y[:10], 3, 1.0, rng))
    assert main(["compare", "--workdir", str(tmp_path), "--metric", "micro_f1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "micro_f1 leaves out the no-relation label" in err[0] and "--no-relation NAME" in err[0]
    assert main(["compare", "--workdir", str(tmp_path), "--metric", "micro_f1", "--no-relation", "NR"]) == 0
    assert main(["blend", "--workdir", str(tmp_path), "--metric", "micro_f1", "--format", "generic",
                 "--out", str(tmp_path / "s.csv")]) == 2
    assert not (tmp_path / "s.csv").exists()
