"""Tuning: queueing exact trial counts, pruning, failures, resume, best config round trip, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from kfold.core.config import Config, load_config_file  # noqa: E402
from kfold.core.errors import ConfigError, TrainingError  # noqa: E402
from tuning import StudySettings, load_space, open_study, search, summary_lines, write_best  # noqa: E402
from tuning.cli import main as tuning_main  # noqa: E402

QUIET = dict(log=lambda m: None)


def fake_trial(quality, fail_when=None):
    """A stand-in for a k-fold run: fold scores from a function of the config, reported fold by fold."""

    def run(cfg, tag, on_fold):
        if fail_when and fail_when(cfg):
            raise TrainingError("fold 0 epoch 1 step 3: loss is nan")
        scores = []
        for fold in range(cfg.folds):
            s = quality(cfg) + 0.1 * fold
            scores.append(s)
            on_fold(fold, {"metrics": {"accuracy": s}})
        return float(np.mean(scores))

    return run


def _settings(tmp_path, **kw):
    return StudySettings(study=kw.pop("study", "s"), workdir=str(tmp_path), sampler_seed=0, **kw)


def test_study_runs_exactly_n_trials_and_resumes(tmp_path):
    base = Config(folds=3)
    settings = _settings(tmp_path)
    quality = lambda cfg: 100 - abs(np.log10(cfg.lr) + 4) * 20  # noqa: E731  best near lr 1e-4
    done = search(base, settings, load_space(None), 6, run_trial=fake_trial(quality), **QUIET)
    assert sum(done.values()) == 6
    study = open_study(settings, create=False)
    assert len(study.trials) == 6
    # the same command again: nothing left to do
    assert sum(search(base, settings, load_space(None), 6, run_trial=fake_trial(quality), **QUIET).values()) == 0
    # asking for more runs only the missing ones
    assert sum(search(base, settings, load_space(None), 8, run_trial=fake_trial(quality), **QUIET).values()) == 2
    assert len(open_study(settings, create=False).trials) == 8


def test_bad_trials_are_pruned_after_a_fold(tmp_path):
    base = Config(folds=5)
    settings = _settings(tmp_path, pruner="median")
    # half of the learning rates are terrible: those trials should stop after one or two folds
    quality = lambda cfg: 90.0 if cfg.lr < 5e-5 else 10.0  # noqa: E731
    search(base, settings, load_space(None), 12, run_trial=fake_trial(quality), **QUIET)
    study = open_study(settings, create=False)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, [(t.state.name, t.params) for t in study.trials]
    assert all(t.params["lr"] >= 5e-5 for t in pruned)
    assert all(t.user_attrs["folds_done"] <= 2 for t in pruned)
    lines = "\n".join(summary_lines(study))
    assert f"pruned {len(pruned)} of 12 trials" in lines and "fold trainings skipped" in lines


def test_pruning_summary_does_not_depend_on_measured_seconds():
    # trials recorded as 0.0 s (they ran in under 0.05 s) still count as pruned / skipped folds;
    # only the time saved needs a measured time per fold
    import optuna
    from optuna.distributions import FloatDistribution

    def study_with(seconds):
        study = optuna.create_study(study_name="s", direction="maximize")
        study.set_user_attr("base_config", {"folds": 5})
        dist = {"lr": FloatDistribution(1e-6, 1e-3)}
        for state, folds_done in (("COMPLETE", 5), ("PRUNED", 1), ("PRUNED", 2)):
            study.add_trial(optuna.trial.create_trial(
                state=getattr(optuna.trial.TrialState, state), value=50.0 if state == "COMPLETE" else 10.0,
                params={"lr": 1e-4}, distributions=dist,
                user_attrs={"folds_done": folds_done, "seconds": seconds * folds_done}))
        return summary_lines(study)[-1]

    assert study_with(0.0) == "pruned 2 of 3 trials: 7 fold trainings skipped"
    timed = study_with(60.0)  # 60 s per fold: 7 skipped folds = 7.0 min, of 8 min spent + 7 skipped
    assert timed.startswith("pruned 2 of 3 trials: 7 fold trainings skipped, about 7.0 min saved (47% ")


def test_failed_trials_are_recorded_with_reason_and_study_goes_on(tmp_path):
    base = Config(folds=2)
    settings = _settings(tmp_path)
    run = fake_trial(lambda cfg: 50.0, fail_when=lambda cfg: cfg.label_smoothing > 0.1)
    search(base, settings, load_space(None), 8, run_trial=run, **QUIET)
    study = open_study(settings, create=False)
    states = [t.state.name for t in study.trials]
    assert "FAIL" in states and "COMPLETE" in states and len(states) == 8
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert all("loss is nan" in t.user_attrs["fail_reason"] for t in failed)


def test_best_params_round_trip_into_a_kfold_config(tmp_path):
    base = Config(folds=3, epochs=2, variant="absdiff")
    settings = _settings(tmp_path)
    search(base, settings, load_space(None), 4, run_trial=fake_trial(lambda cfg: -cfg.label_smoothing), **QUIET)
    study = open_study(settings, create=False)
    path, best = write_best(study, tmp_path / "best.json")
    values = load_config_file(path)
    assert values["lr"] == best.params["lr"] and values["label_smoothing"] == best.params["label_smoothing"]
    assert values["variant"] == "absdiff" and values["seed"] == 1
    assert Config(**values).epochs == 2


def test_space_files_and_forbidden_keys(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
                                 "batch_size": {"type": "categorical", "choices": [8, 16]},
                                 "marker": {"type": "categorical", "choices": ["entity_marker_punct", "entity_marker"]},
                                 "label_smoothing": None}))
    loaded = load_space(space)
    assert set(loaded) == {"lr", "warmup_ratio", "batch_size", "marker"}
    space.write_text(json.dumps({"seed": {"type": "int", "low": 1, "high": 5}}))
    with pytest.raises(ConfigError, match="'seed': it cannot be tuned"):
        load_space(space)
    space.write_text(json.dumps({"lrr": {"type": "float", "low": 1e-5, "high": 1e-4}}))
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_space(space)
    space.write_text(json.dumps({"marker": {"type": "categorical", "choices": ["entity_markr"]}}))
    with pytest.raises(ConfigError, match="choice 'entity_markr' is not a valid marker"):
        load_space(space)


def test_a_changed_base_config_is_another_study(tmp_path):
    settings = _settings(tmp_path)
    search(Config(folds=2), settings, load_space(None), 1, run_trial=fake_trial(lambda c: 1.0), **QUIET)
    with pytest.raises(ConfigError, match="started with other settings \\(folds\\)"):
        search(Config(folds=3), settings, load_space(None), 2, run_trial=fake_trial(lambda c: 1.0), **QUIET)


def test_real_kfold_trials_leave_oof_logits_in_the_store(tmp_path, demo_dir, tiny_bert, capsys):
    argv = ["search", "--study", "tiny", "--workdir", str(tmp_path), "--n-trials", "2", "--backbone", tiny_bert,
            "--data", str(demo_dir / "train.tsv"), "--folds", "2", "--epochs", "1", "--batch-size", "16",
            "--sampler-seed", "0", "--report-to", "tensorboard"]
    assert tuning_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("COMPLETE: accuracy") == 2
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["split-bert-s1-tiny-t0", "split-bert-s1-tiny-t1"]
    assert all((tmp_path / "runs" / r / "oof.npz").exists() for r in runs)
    # each trial: one tracker run, and its run folder and scores as user attributes (optuna-dashboard shows them)
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == runs
    study = open_study(StudySettings(study="tiny", workdir=str(tmp_path)), create=False)
    for trial in study.trials:
        attrs = trial.user_attrs
        folder = Path(attrs["run_folder"])
        summary = json.loads((folder / "summary.json").read_text())
        assert folder.name == f"split-bert-s1-tiny-t{trial.number}"
        assert attrs["oof_accuracy"] == pytest.approx(summary["oof"]["accuracy"], abs=1e-4)
        assert attrs["fold1_accuracy"] == pytest.approx(summary["folds"][1]["accuracy"], abs=1e-4)
    assert tuning_main(["best", "--study", "tiny", "--workdir", str(tmp_path)]) == 0
    assert tuning_main(["show", "--study", "tiny", "--workdir", str(tmp_path)]) == 0
    assert tuning_main(["plot", "--study", "tiny", "--workdir", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["tiny-history.png", "tiny-importance.png",
                                                                       "tiny-intermediate.png"]
    best = load_config_file(tmp_path / "tiny-best.json")
    assert best["backbone"] == tiny_bert and best["folds"] == 2


def _search_cmd(workdir, study, demo_dir, backbone, n, storage="", extra=()):
    cmd = [sys.executable, "-m", "tuning.cli", "search", "--study", study, "--workdir", str(workdir), "--n-trials", str(n),
           "--backbone", backbone, "--data", str(demo_dir / "train.tsv"), "--folds", "2", "--epochs", "1",
           "--batch-size", "16", *extra]
    if storage:
        cmd += ["--storage", storage]
    return cmd


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def _two_workers(tmp_path, demo_dir, tiny_bert, storage, name="shared"):
    procs = [subprocess.Popen(_search_cmd(tmp_path, name, demo_dir, tiny_bert, 4, storage), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    study = open_study(StudySettings(study=name, workdir=str(tmp_path), storage=storage), create=False)
    states = [t.state.name for t in study.trials]
    # pruning depends on which worker finishes first; what matters is four finished trials and no lost one
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states, (states, outs)
    assert len({t.number for t in study.trials}) == 4
    finished = [line for out in outs for line in out.splitlines() if line.startswith("trial ")]
    assert sorted(int(line.split()[1]) for line in finished) == [0, 1, 2, 3], outs


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path, demo_dir, tiny_bert):
    _two_workers(tmp_path, demo_dir, tiny_bert, "")


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_one_postgresql_study(tmp_path, demo_dir, tiny_bert):
    url = os.environ.get("REKFOLD_PG_URL")
    if not url:
        pytest.skip("no PostgreSQL server: set REKFOLD_PG_URL (.ci/run starts one on loopback)")
    pytest.importorskip("psycopg2")
    import uuid

    _two_workers(tmp_path, demo_dir, tiny_bert, url, name=f"shared-{uuid.uuid4().hex[:8]}")


@pytest.mark.slow
def test_killed_worker_trial_is_detected_by_heartbeat_and_retried(tmp_path, demo_dir, tiny_bert):
    extra = ["--heartbeat", "1", "--grace", "3", "--epochs", "4"]
    proc = subprocess.Popen(_search_cmd(tmp_path, "hb", demo_dir, tiny_bert, 1, extra=extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and not list(tmp_path.glob("runs/*/fold0/.lock")):
        time.sleep(0.05)
    time.sleep(0.5)  # inside the trial's first fold
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(4)  # let the heartbeat go stale
    rerun = subprocess.run(_search_cmd(tmp_path, "hb", demo_dir, tiny_bert, 1, extra=extra), capture_output=True,
                           text=True, env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    study = open_study(StudySettings(study="hb", workdir=str(tmp_path)), create=False)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE"], states
    assert study.trials[1].params == study.trials[0].params
    assert study.trials[1].system_attrs.get("failed_trial") == 0


def test_a_worker_with_other_runtime_settings_works_on_the_same_study(tmp_path):
    # item 9: where and how fast trials train (--cluster, --cpus-per-fold, --threads, ...) is not the study's
    # identity; a second worker with other such settings helps with the same study
    settings = _settings(tmp_path)
    base = Config(folds=2)
    search(base, settings, load_space(None), 1, run_trial=fake_trial(lambda c: 1.0), **QUIET)
    other = base.replace(cluster="none", cpus_per_fold=2, threads=1, retries=0, max_parallel=1, gpus_per_fold=0.0,
                         report_to="tensorboard", mlflow_uri="sqlite:///other.db", wandb_project="other")
    assert sum(search(other, settings, load_space(None), 2, run_trial=fake_trial(lambda c: 1.0), **QUIET).values()) == 1
    with pytest.raises(ConfigError, match=r"started with other settings \(label_smoothing\)"):
        search(base.replace(label_smoothing=0.0), settings, load_space(None), 3, run_trial=fake_trial(lambda c: 1.0),
               **QUIET)
    # ... but its data is: a worker pointed at another training file is another study
    with pytest.raises(ConfigError, match=r"started with other settings \(bad_rows, data\)"):
        search(base.replace(data="other.tsv", bad_rows="skip"), settings, load_space(None), 3,
               run_trial=fake_trial(lambda c: 1.0), **QUIET)


def test_a_lost_runtime_ends_the_search_instead_of_failing_every_trial(tmp_path):
    from kfold.core.errors import RuntimeLost

    calls = []

    def lost(cfg, tag, on_fold):
        calls.append(tag)
        raise RuntimeLost("the Ray runtime was lost: the cluster's head (10.0.0.1:6379) cannot be reached")

    with pytest.raises(RuntimeLost, match="cannot be reached"):
        search(Config(folds=2), _settings(tmp_path), load_space(None), 4, run_trial=lost, **QUIET)
    assert len(calls) == 1


def test_two_trials_in_flight_take_distinct_queued_trials_with_a_constant_liar(tmp_path, monkeypatch):
    import threading

    import optuna

    sampler_settings: dict = {}

    class Recording(optuna.samplers.TPESampler):  # what the study asks of TPE, whatever this Optuna's defaults are
        def __init__(self, *args, **kwargs):
            sampler_settings.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(optuna.samplers, "TPESampler", Recording)

    barrier = threading.Barrier(2, timeout=30)
    tags: list[str] = []

    def run(cfg, tag, on_fold):
        tags.append(tag)
        barrier.wait()  # both trials are in flight at once (running, not yet told)
        for fold in range(cfg.folds):
            on_fold(fold, {"metrics": {"accuracy": 1.0}})
        return 1.0

    lines: list[str] = []
    settings = _settings(tmp_path, pruner="none")
    done = search(Config(folds=2), settings, load_space(None), 4, run_trial=run, slots=2, log=lines.append)
    assert done == {"COMPLETE": 4, "PRUNED": 0, "FAIL": 0}
    assert sorted(tags) == ["s-t0", "s-t1", "s-t2", "s-t3"]  # each queued trial once, its own run folder
    assert "2 trials side by side, one per slot; this process keeps the study and decides pruning" in lines
    # trials in flight count as poor results while the next is sampled: no near-duplicates side by side (asked
    # for explicitly: Optuna's default for constant_liar differs between releases)
    assert sampler_settings.get("constant_liar") is True
