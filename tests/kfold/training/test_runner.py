"""Fold maps, the run store, resume, --fold subsets, locks between processes, corrupt store files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from kfold.core.config import Config
from kfold.core.errors import StoreError, TrainingError
from kfold.core.store import RunDir, load_predictions
from kfold.data._readers import read_dataset
from kfold.training._folds import load_fold_map, make_fold_map
from kfold.training._runner import run_kfold, run_name
from kfold.training import build_model

QUIET = dict(log=lambda m: None)


def _cfg(demo_dir, backbone, **over):
    base = dict(backbone=backbone, data=str(demo_dir / "train.tsv"), test=str(demo_dir / "test.tsv"), folds=3,
                epochs=1, batch_size=16, lr=1e-3)
    base.update(over)
    return Config(**base)


def test_fold_map_is_stable_stratified_and_seeded(demo_dir):
    ds = read_dataset(demo_dir / "train.tsv")
    a, _ = make_fold_map(ds, 5, seed=42)
    b, _ = make_fold_map(ds, 5, seed=42)
    c, _ = make_fold_map(ds, 5, seed=43)
    assert a.hash == b.hash and np.array_equal(a.folds, b.folds)
    assert a.hash != c.hash
    sizes = np.bincount(a.folds)
    assert sizes.max() - sizes.min() <= 1
    y = ds.y
    for label in np.unique(y):
        per_fold = np.bincount(a.folds[y == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)


def test_rare_labels_get_a_warning_not_an_error(demo_dir):
    ds = read_dataset(demo_dir / "train.tsv")
    rare = ds.subset([i for i, ex in enumerate(ds.examples) if ex.label != "인물:배우자"] +
                     [i for i, ex in enumerate(ds.examples) if ex.label == "인물:배우자"][:2])
    fm, warnings = make_fold_map(rare, 5, seed=1)
    assert any("인물:배우자" in w and "3 fold(s) have none" in w for w in warnings)
    assert len(np.unique(fm.folds[rare.y == rare.label_names.index("인물:배우자")])) == 2


def test_grouping_keeps_identical_sentences_in_one_fold(demo_dir):
    ds = read_dataset(demo_dir / "train.tsv")
    fm, _ = make_fold_map(ds, 4, seed=0, group="duplicates")
    by_sentence = {}
    for ex, f in zip(ds.examples, fm.folds):
        by_sentence.setdefault(ex.sentence, set()).add(int(f))
    dups = [s for s in by_sentence if sum(ex.sentence == s for ex in ds.examples) > 1]
    assert dups, "the demo data should contain repeated sentences"
    assert all(len(by_sentence[s]) == 1 for s in dups)


def test_oof_covers_every_id_once_and_test_logits_average_folds(tmp_path, demo_dir, tiny_bert):
    cfg = _cfg(demo_dir, tiny_bert)
    out = run_kfold(cfg, tmp_path, **QUIET)
    assert out.complete and out.trained == [0, 1, 2]
    oof = load_predictions(out.run.oof_path)
    ds = read_dataset(demo_dir / "train.tsv")
    assert sorted(oof.ids.tolist()) == sorted(ex.id for ex in ds.examples) and len(oof.ids) == len(set(oof.ids))
    assert oof.logits.dtype == np.float32 and np.isfinite(oof.logits).all()
    assert np.array_equal(oof.y, ds.y)
    for f in range(3):
        valid = load_predictions(out.run.fold_dir(f) / "valid.npz")
        rows = np.isin(oof.ids, valid.ids)
        assert np.array_equal(oof.folds[rows], np.full(rows.sum(), f))
    test = load_predictions(out.run.test_path)
    assert test.fold_logits.shape == (3, 30, len(ds.label_names))
    np.testing.assert_allclose(test.logits, test.fold_logits.mean(0), rtol=1e-6)
    config = json.loads(out.run.config_path.read_text())
    assert config["config"]["seed"] == 1 and config["versions"]["torch"] != "absent"
    assert config["fold_map_hash"] == oof.fold_map_hash
    # rerunning the same command trains nothing
    again = run_kfold(cfg, tmp_path, **QUIET)
    assert again.trained == [] and again.skipped == [0, 1, 2]


def test_resume_after_crash_equals_uninterrupted_run(tmp_path, demo_dir, tiny_bert):
    # fp32: a CPU's bf16 kernels need not repeat their last bits between processes and runs (README, Reliability)
    cfg = _cfg(demo_dir, tiny_bert, precision="fp32")
    whole = run_kfold(cfg, tmp_path / "a", **QUIET)
    calls = Counter()

    def crashing(c, num_labels, vocab):
        calls["n"] += 1
        if calls["n"] == 2:
            raise TrainingError("simulated crash in fold 1")
        return build_model(c, num_labels, vocab)

    with pytest.raises(TrainingError):
        run_kfold(cfg, tmp_path / "b", model_factory=crashing, **QUIET)
    run = RunDir(tmp_path / "b" / "runs" / run_name(cfg))
    assert run.fold_record(0) is not None and run.fold_record(1) is None and not run.oof_path.exists()
    resumed = run_kfold(cfg, tmp_path / "b", **QUIET)
    assert resumed.skipped == [0] and resumed.trained == [1, 2]
    a, b = load_predictions(whole.run.oof_path), load_predictions(resumed.run.oof_path)
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.ids, b.ids)


def test_fold_subsets_assemble_into_the_same_result(tmp_path, demo_dir, tiny_bert):
    cfg = _cfg(demo_dir, tiny_bert)
    whole = run_kfold(cfg, tmp_path / "a", **QUIET)
    first = run_kfold(cfg, tmp_path / "b", folds=[0, 2], **QUIET)
    assert not first.complete and not first.run.oof_path.exists()
    second = run_kfold(cfg, tmp_path / "b", folds=[1], **QUIET)
    assert second.complete
    assert np.array_equal(load_predictions(whole.run.oof_path).logits, load_predictions(second.run.oof_path).logits)
    assert np.array_equal(load_predictions(whole.run.test_path).logits, load_predictions(second.run.test_path).logits)


def test_other_settings_need_a_tag(tmp_path, demo_dir, tiny_bert):
    cfg = _cfg(demo_dir, tiny_bert)
    run_kfold(cfg, tmp_path, folds=[0], **QUIET)
    other = cfg.replace(lr=5e-4)
    assert run_name(other) != run_name(cfg)  # the settings that differ are in the name
    run = RunDir(tmp_path / "runs" / run_name(cfg))
    cfg_json = json.loads(run.config_path.read_text())
    cfg_json["config"]["warmup_ratio"] = 0.3  # as if another setting had been used for this folder
    run.config_path.write_text(json.dumps(cfg_json))
    with pytest.raises(StoreError, match="field 'warmup_ratio': found 0.3, now 0.1; use --tag"):
        run_kfold(cfg, tmp_path, **QUIET)


def test_altered_fold_file_is_detected_not_trusted(tmp_path, demo_dir, tiny_bert):
    cfg = _cfg(demo_dir, tiny_bert)
    out = run_kfold(cfg, tmp_path, **QUIET)
    valid = out.run.fold_dir(1) / "valid.npz"
    data = bytearray(valid.read_bytes())
    data[-200] ^= 0xFF
    valid.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"fold1/valid\.npz: content hash differs from .*done\.json"):
        run_kfold(cfg, tmp_path, **QUIET)


def test_fold_map_of_other_data_is_refused(tmp_path, demo_dir, tiny_bert):
    cfg = _cfg(demo_dir, tiny_bert)
    out = run_kfold(cfg, tmp_path, folds=[0], **QUIET)
    fm_path = json.loads(out.run.config_path.read_text())["fold_map"]["path"]
    raw = json.loads(open(fm_path).read())
    raw["data_hash"] = "0" * 64
    open(fm_path, "w").write(json.dumps(raw))
    with pytest.raises(StoreError, match="belongs to other data"):
        run_kfold(cfg, tmp_path, **QUIET)
    assert load_fold_map(fm_path).data_hash == "0" * 64


def _cli(workdir, demo_dir, backbone, *extra, epochs=1):
    return [sys.executable, "-m", "kfold.cli", "run", "--workdir", str(workdir), "--backbone", backbone,
            "--data", str(demo_dir / "train.tsv"), "--test", str(demo_dir / "test.tsv"), "--folds", "4",
            "--epochs", str(epochs), "--batch-size", "16", "--lr", "0.001", *extra]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def test_two_processes_never_train_the_same_fold(tmp_path, demo_dir, tiny_bert):
    procs = [subprocess.Popen(_cli(tmp_path, demo_dir, tiny_bert, epochs=3), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trained = [[int(line.split(" fold ")[1].split(":")[0]) for line in out.splitlines()
                if " fold " in line and "train ex/s" in line] for out in outs]
    assert sorted(trained[0] + trained[1]) == [0, 1, 2, 3], outs
    run = next((tmp_path / "runs").iterdir())
    assert (run / "oof.npz").exists()
    assert len(load_predictions(run / "oof.npz").ids) == 120


@pytest.mark.slow
def test_sigkill_mid_fold_then_rerun_equals_uninterrupted(tmp_path, demo_dir, tiny_bert):
    """Kill a real `kfold run` process with SIGKILL while it trains fold 1; the rerun finishes with OOF
    logits identical to an uninterrupted run's."""
    clean = subprocess.run(_cli(tmp_path / "clean", demo_dir, tiny_bert, epochs=6), capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    proc = subprocess.Popen(_cli(tmp_path / "killed", demo_dir, tiny_bert, epochs=6), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    runs = tmp_path / "killed" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline:
        done0 = list(runs.glob("*/fold0/done.json")) if runs.exists() else []
        if done0 and (done0[0].parent.parent / "fold1" / ".lock").exists():
            break
        time.sleep(0.02)
    time.sleep(0.3)  # well inside fold 1 (each fold trains for seconds)
    proc.kill()
    proc.wait()
    run = next(runs.iterdir())
    assert (run / "fold0" / "done.json").exists()
    assert not (run / "fold1" / "done.json").exists(), "the process was not killed mid-fold"
    assert not (run / "oof.npz").exists()
    rerun = subprocess.run(_cli(tmp_path / "killed", demo_dir, tiny_bert, epochs=6), capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    a = load_predictions(next((tmp_path / "clean" / "runs").iterdir()) / "oof.npz")
    b = load_predictions(run / "oof.npz")
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.ids, b.ids)


@pytest.mark.parametrize("average", [0, 2])
def test_saved_fold_models_predict_a_new_file_like_the_run_did(tmp_path, demo_dir, tiny_bert, average):
    # with --average-epochs the saved model is the average, so a later prediction repeats the run's logits
    from kfold.training._predict import predict_run

    cfg = _cfg(demo_dir, tiny_bert, folds=2, save_models=True, epochs=max(1, average), average_epochs=average)
    lines = []
    out = run_kfold(cfg, tmp_path, log=lines.append)
    if average:
        assert sum("weights averaged over epochs 1-2," in line for line in lines) == 2
        record = out.run.fold_record(0)
        assert record["history"][-1]["averaged_epochs"] == [1, 2] and record["best_epoch"] == 2
    assert (out.run.fold_dir(0) / "model" / "model.pt").exists()
    path = predict_run(out.run.root, demo_dir / "test_gold.tsv", log=lambda m: None)
    new, old = load_predictions(path), load_predictions(out.run.test_path)
    assert path.name == "predict-test_gold.npz" and np.array_equal(new.ids, old.ids)
    np.testing.assert_allclose(new.logits, old.logits, rtol=1e-5, atol=1e-6)
    assert (new.y >= 0).all()  # the answers file is labelled
    plain = run_kfold(_cfg(demo_dir, tiny_bert, folds=2), tmp_path / "b", **QUIET)
    with pytest.raises(StoreError, match="no saved model; train the run with --save-models"):
        predict_run(plain.run.root, demo_dir / "test.tsv")


def test_cli_runs_variants_times_seeds_then_reports(tmp_path, demo_dir, tiny_bert, capsys, monkeypatch):
    import kfold.training._device
    from kfold.cli import main

    monkeypatch.setattr(kfold.training._device, "cpu_has_native_bf16", lambda: True)
    argv = ["run", "--workdir", str(tmp_path), "--backbone", tiny_bert, "--data", str(demo_dir / "train.tsv"),
            "--variants", "split,share", "--seeds", "1,2", "--folds", "3", "--epochs", "1", "--lr", "0.001"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    per_fold = [line for line in out.splitlines() if "train ex/s" in line]
    assert len(per_fold) == 12 and all(" weights averaged over epochs 1-1, 80 train / 40 valid" in line for line in per_fold)
    assert out.count(": OOF accuracy") == 4 and "majority-class accuracy on this data" in out
    assert out.count("--precision auto trains in bf16") == 1  # once per command, not once per run
    # one line per run says what it computes with; transformers' per-fold loading bar is gone
    assert out.count("attention eager, precision bf16 on cpu") == 4 and "Loading weights" not in out
    assert main(["report", "--workdir", str(tmp_path), "--bootstrap", "50"]) == 0
    report = capsys.readouterr().out
    assert "split-bert-s1" in report and "share-bert-s2" in report and "(2)" in report  # seed spread over 2 seeds
    assert "trained on" in report and all(line.rstrip().endswith("cpu") for line in report.splitlines()
                                          if line.startswith(("split-bert", "share-bert")))  # from the records


def test_driver_threads_prepare_runs_one_at_a_time(tmp_path, demo_dir, monkeypatch):
    """`tuning search` prepares one trial per slot in threads: the first transformers import and the tokenizers are
    not thread-safe (two trials starting together on a fresh process failed with "cannot import name
    'AutoTokenizer'"), so the preparation takes turns."""
    import threading

    from kfold.training import _runner

    inside, most, lock = [0], [0], threading.Lock()

    class Prepared(Exception):
        pass

    def slow_prepare(cfg, workdir, log):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.2)
        with lock:
            inside[0] -= 1
        raise Prepared

    monkeypatch.setattr(_runner, "prepare", slow_prepare)
    raised = []

    def one(seed):
        try:
            _runner.prepare_job(_cfg(demo_dir, "x", seed=seed), tmp_path, **QUIET)
        except Prepared:
            raised.append(seed)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(raised) == [1, 2, 3] and most[0] == 1


def test_refit_without_a_test_file_is_refused_before_any_fold_trains(tmp_path, demo_dir, tiny_bert):
    # issue 36 item 2: it failed only after every fold had trained (and, in a queue, cancelled the other runs)
    from kfold.core.errors import ConfigError

    cfg = Config(backbone=tiny_bert, data=str(demo_dir / "train.tsv"), folds=2, epochs=1, refit=True, cluster="none")
    with pytest.raises(ConfigError, match="--refit trains one more model on every row to predict the test file; pass --test"):
        run_kfold(cfg, tmp_path, log=lambda m: None)
    assert not list(tmp_path.glob("runs/*/fold*/done.json"))


def test_a_built_backbone_rebuilt_with_other_weights_is_other_weights(tmp_path, demo_dir, tiny_bert, monkeypatch):
    # issue 37: the built folder's hash is part of the run's identity (config.json) and the resume check
    import kfold.training._runner as runner

    cfg = Config(backbone=tiny_bert, data=str(demo_dir / "train.tsv"), folds=2, epochs=1, cluster="none")
    monkeypatch.setattr(runner, "built_backbone_hash", lambda name: "a" * 64)
    first = run_kfold(cfg, tmp_path, folds=[0], log=lambda m: None)
    assert first.run.read_config()["backbone_hash"] == "a" * 64
    monkeypatch.setattr(runner, "built_backbone_hash", lambda name: "b" * 64)
    with pytest.raises(StoreError, match=r"field 'backbone_hash': the run was made with other weights of backbone"):
        run_kfold(cfg, tmp_path, log=lambda m: None)
    monkeypatch.setattr(runner, "built_backbone_hash", lambda name: "a" * 64)
    again = run_kfold(cfg, tmp_path, log=lambda m: None)  # the same weights: it resumes
    assert again.complete and again.skipped == [0]
