"""`kfold auto`: the loop with a fake clock and a fake trainer, then a tiny real end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kfold.auto._auto import SHAPE_FILE, AutoSettings, run_auto
from kfold.auto._plan import run_seconds
from kfold.core.config import Config
from kfold.core.errors import ConfigError
from kfold.core.store import REFIT, RunDir
from kfold.data._readers import read_dataset
from kfold.training._probe import Speed
from kfold.training._runner import run_name
from tests.fakes import fake_run, noisy_member
from tests.kfold.training.scripted import ScriptedExecutor, fake_result

SPEED = Speed(train_rows_per_s=4.0, predict_rows_per_s=10.0, load_seconds=1.0)  # demo rows: runs of minutes


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTrainer:
    """Stands in for run_kfold: each fold 'takes' its estimated seconds times ``slow`` on the fake clock, then
    the run is written as kfold run writes it. Records what it was asked to train."""

    def __init__(self, clock: FakeClock, demo_dir, slow: float = 1.0, skill: float = 2.0):
        self.clock, self.slow, self.skill = clock, slow, skill
        self.train = read_dataset(demo_dir / "train.tsv")
        self.test = read_dataset(demo_dir / "test.tsv", self.train.label_names, role="test")
        self.calls: list[str] = []
        self.folds_trained = 0

    def __call__(self, cfg: Config, workdir, log=print, before_part=None):
        from kfold.auto._plan import Size

        name = run_name(cfg)
        self.calls.append(name)
        size = Size(len(self.train), len(self.test))
        per_fold = run_seconds(cfg, size, SPEED) / cfg.folds * self.slow
        y = self.train.y
        folds = np.arange(len(y)) % cfg.folds
        for fold in range(cfg.folds):
            if before_part is not None:  # the scheduler asks before it submits a part
                before_part(cfg, name, fold)
            self.clock.now += per_fold
            self.folds_trained += 1
        rng = np.random.default_rng(len(self.calls))
        fake_run(workdir, name, noisy_member(y, len(self.train.label_names), self.skill, rng), y, folds,
                 self.train.label_names, rng.normal(size=(len(self.test), len(self.train.label_names))),
                 ids=self.train.ids, test_ids=self.test.ids, config={"variant": cfg.variant})


def _settings(demo_dir, tmp_path, budget, **kw):
    base = Config(data=str(demo_dir / "train.tsv"), test=str(demo_dir / "test.tsv"), epoch_scores=False)
    return AutoSettings(base=base, budget=budget, fmt="pstage2", workdir=str(tmp_path / "w"), **kw)


def _one_run(demo_dir, folds=3):
    from kfold.auto._plan import Size

    n = len(read_dataset(demo_dir / "train.tsv"))
    return run_seconds(Config(folds=folds, epoch_scores=False), Size(n, len(read_dataset(demo_dir / "test.tsv", role="test"))), SPEED)


def test_auto_trains_the_plan_blends_and_writes_a_checked_file(demo_dir, tmp_path):
    clock = FakeClock()
    trainer = FakeTrainer(clock, demo_dir)
    budget = 2.6 * _one_run(demo_dir, 3) + 200
    res = run_auto(_settings(demo_dir, tmp_path, budget), clock=clock, train=trainer, probe=lambda cfg: SPEED,
                   log=lambda m: None)
    # the first plan holds two runs (the strongest first, then another head); the re-plan after the first run,
    # with exact estimates, finds room for a third
    assert res.trained == trainer.calls == ["split-minilm-s1", "share-minilm-s1", "absdiff-minilm-s1"]
    assert res.plan.runs[0].status == "done" and clock.now - 1000.0 <= budget  # the whole command inside the budget
    manifest = json.loads(res.path.with_name(res.path.name + ".manifest.json").read_text())
    assert manifest["members"] == trainer.calls and manifest["method"] == res.method
    assert set(manifest["honest_by_method"]) == {"soft", "weighted", "caruana", "rank", "hard", "stack"}
    assert json.loads((tmp_path / "w" / SHAPE_FILE).read_text())["folds"] == 3
    rows = res.path.read_text().splitlines()
    assert rows[0] == "pred" and len(rows) == 1 + 30


def test_a_slow_run_makes_the_replan_shorten_what_no_longer_fits(demo_dir, tmp_path):
    clock = FakeClock()
    trainer = FakeTrainer(clock, demo_dir, slow=1.6)  # every run takes 1.6x its estimate
    budget = 2.6 * _one_run(demo_dir, 3) + 200  # the first plan holds two full runs and a shorter third
    lines = []
    res = run_auto(_settings(demo_dir, tmp_path, budget), clock=clock, train=trainer, probe=lambda cfg: SPEED,
                   log=lines.append)
    # after the slow first run the second no longer fits with 5 epochs: it runs with 4, and nothing after it
    assert trainer.calls == ["split-minilm-s1", "share-minilm-s1+ep=4,avg=2"] and res.members == trainer.calls
    assert any(line.startswith("re-planned (runs take 1.60x the estimate): 1 more run(s)") for line in lines)
    assert clock.now - 1000.0 <= budget


def test_a_run_overrunning_its_estimate_is_stopped_between_folds_and_kept(demo_dir, tmp_path):
    clock = FakeClock()
    trainer = FakeTrainer(clock, demo_dir, slow=1.0)
    one = _one_run(demo_dir, 3)
    settings = _settings(demo_dir, tmp_path, 2.6 * one + 200)
    run_auto(settings, clock=clock, train=trainer, probe=lambda cfg: SPEED, log=lambda m: None)
    first = list(trainer.calls)
    # the same command again adds a run; it is far slower than planned and the guard stops it after two folds
    trainer.slow, trainer.calls, trainer.folds_trained = 2.5, [], 0
    lines = []
    start = clock.now
    res = run_auto(_settings(demo_dir, tmp_path, 1.8 * one), clock=clock, train=trainer, probe=lambda cfg: SPEED,
                   log=lines.append)
    assert len(trainer.calls) == 1 and trainer.calls[0] not in first and trainer.folds_trained == 2
    assert any("fold 2 would not finish inside the budget" in line for line in lines)
    assert res.members == first and clock.now - start <= 1.8 * one  # the stopped run is not blended


def test_resuming_with_a_larger_budget_adds_runs_and_retrains_nothing(demo_dir, tmp_path):
    clock = FakeClock()
    trainer = FakeTrainer(clock, demo_dir)
    one = _one_run(demo_dir, 3)
    run_auto(_settings(demo_dir, tmp_path, 1.5 * one + 200), clock=clock, train=trainer, probe=lambda cfg: SPEED,
             log=lambda m: None)
    assert trainer.calls == ["split-minilm-s1", "share-minilm-s1+ep=4,avg=2"]  # the second shortened to fit
    # 10x the budget: five folds would fit now, but the workdir's shape (3 folds) is kept
    res = run_auto(_settings(demo_dir, tmp_path, 10 * one), clock=clock, train=trainer, probe=lambda cfg: SPEED,
                   log=lambda m: None)
    assert len(set(trainer.calls)) == len(trainer.calls) > 3  # nothing trained twice
    assert res.members[:2] == ["split-minilm-s1", "share-minilm-s1+ep=4,avg=2"]  # the short version stays the member
    assert len(res.members) == len(trainer.calls)


def test_dry_run_prints_the_plan_and_trains_nothing(demo_dir, tmp_path):
    def no_training(*args, **kwargs):
        raise AssertionError("a dry run must not train")

    lines = []
    res = run_auto(_settings(demo_dir, tmp_path, 3 * _one_run(demo_dir, 3), dry_run=True), clock=FakeClock(),
                   train=no_training, probe=lambda cfg: SPEED, log=lines.append)
    assert res.path is None and len(res.plan.to_run) >= 1
    assert any(line.startswith("plan (") for line in lines) and any("1. split-minilm-s1" in line for line in lines)
    assert not (tmp_path / "w" / "runs").exists() and not (tmp_path / "w" / SHAPE_FILE).exists()


def test_a_budget_too_small_for_any_run_is_refused_with_what_it_needs(demo_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"--budget 0\.5 min: the smallest plan .* needs about [\d.]+ min"):
        run_auto(_settings(demo_dir, tmp_path, 30), clock=FakeClock(), train=None, probe=lambda cfg: SPEED,
                 log=lambda m: None)


def test_tiny_end_to_end_auto_on_demo_data_writes_a_valid_file(tmp_path, tiny_bert, capsys):
    from ensemble.cli import main as ensemble_main
    from kfold.cli import main

    out = tmp_path / "sub.csv"
    argv = ["auto", "--budget", "2m", "--workdir", str(tmp_path / "w"), "--backbone", tiny_bert, "--out", str(out),
            "--max-runs", "2", "--lr", "1e-3", "--epochs", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "probe:" in text and "plan (" in text and "chosen blend:" in text and f"wrote {out}" in text
    demo = tmp_path / "w" / "demo-data"
    assert ensemble_main(["check", str(out), "--format", "pstage2", "--test", str(demo / "test_gold.tsv")]) == 0
    assert "valid pstage2 file, 200 rows" in capsys.readouterr().out
    manifest = json.loads(out.with_name("sub.csv.manifest.json").read_text())
    assert manifest["budget_seconds"] == 120 and manifest["members"]
    # each member is a complete run of the store with its refit, which predicts the test rows by default
    from kfold.core.store import REFIT

    assert manifest["test_source"] == "refit"
    assert all(RunDir(tmp_path / "w" / "runs" / m).fold_record(REFIT) is not None for m in manifest["members"])
    # the same command again trains nothing more
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "run 1 of" not in again and "0 run(s) to train" in again


def test_without_a_test_file_auto_blends_and_reports_but_writes_no_file(demo_dir, tmp_path):
    clock = FakeClock()
    trainer = FakeTrainer(clock, demo_dir)
    settings = _settings(demo_dir, tmp_path, 2.6 * _one_run(demo_dir, 3) + 200)
    settings.base = settings.base.replace(test="")
    lines = []
    res = run_auto(settings, clock=clock, train=trainer, probe=lambda cfg: SPEED, log=lines.append)
    assert res.path is None and res.method and len(res.members) >= 2
    assert "no --test file: no leaderboard file written (the honest OOF scores above are the result)" in lines
    assert not (tmp_path / "w" / "submissions").exists()


def test_a_run_with_every_fold_but_no_oof_is_not_a_finished_member(demo_dir, tmp_path):
    # item 1: fold records alone (a run whose last fold landed after a stop, not assembled) are not a finished run
    from kfold.auto._auto import _progress
    from kfold.core.store import Predictions

    cfg = Config(folds=2, refit=False)
    run = RunDir(tmp_path / "runs" / run_name(cfg))
    names = ("a", "b")
    for fold in range(2):
        run.write_fold(fold, Predictions(np.array([f"id{fold}"]), names, np.zeros((1, 2), np.float32), "f" * 64,
                                         np.array([0]), np.array([fold])), None, {"best_epoch": 1})
    assert _progress(tmp_path, cfg) < 1.0
    fake_run(tmp_path, run.name, np.zeros((2, 2)), np.array([0, 1]), np.array([0, 1]), names)  # now assembled
    assert _progress(tmp_path, cfg) == 1.0


class SlotsExecutor(ScriptedExecutor):
    """Two slots that finish parts in the order they were submitted, each advancing the fake clock by its share
    of the part's estimate (times ``slow``); the logits are random. The real scheduler, store, blend and checker
    do the rest."""

    def __init__(self, clock, size, slow: float, slots: int = 2):
        super().__init__([], slots)
        self.clock, self.size, self.slow = clock, size, slow
        self.finished: list = []

    def wait(self, timeout=None):
        from kfold.auto._plan import fold_seconds, refit_seconds
        from kfold.training import Event

        key = next(iter(self.running))
        spec, payload = self.running.pop(key)
        cost = refit_seconds(spec.cfg, self.size, SPEED) if spec.part == REFIT else fold_seconds(spec.cfg, self.size, SPEED)
        self.clock.now += cost * self.slow / self.slots
        self.finished.append((spec.run, spec.part))
        return [Event(key, "done", result=fake_result(spec, payload))]


def test_a_budget_that_stops_mid_batch_on_two_slots_still_writes_a_checked_file(demo_dir, tmp_path, tiny_bert):
    # items 1 and 7 end to end: two runs side by side; parts take 2.5x their estimate, so the pre-submit guard
    # stops the queue mid-batch (before a refit could start); what completed is assembled, blended and written
    from kfold.auto._plan import Size
    from kfold.core.store import REFIT

    clock = FakeClock()
    n_train, n_test = len(read_dataset(demo_dir / "train.tsv")), len(read_dataset(demo_dir / "test.tsv", role="test"))
    size = Size(n_train, n_test)
    settings = _settings(demo_dir, tmp_path, 1.6 * _one_run(demo_dir, 3))
    settings.base = settings.base.replace(backbone=tiny_bert, refit=True, folds=3)
    settings.fixed_folds, settings.test_source = True, "refit"
    executor = SlotsExecutor(clock, size, slow=2.5)
    lines = []
    res = run_auto(settings, clock=clock, probe=lambda cfg: SPEED, log=lines.append, executor=executor)
    assert any(line.startswith("stopped: ") and "would not finish inside the budget" in line for line in lines), lines
    assert res.path is not None and res.path.exists() and res.members  # a file, checked by run_auto
    written = {run for run, _ in executor.finished}
    assert len(written) == 2  # both runs of the batch had parts written
    for name in res.members:  # every member is an assembled run
        assert (tmp_path / "w" / "runs" / name / "oof.npz").exists()
    assert all(part != REFIT for _, part in executor.finished)  # no refit started that could not finish
    assert res.manifest["test_source"] == "folds"


class OneRunFails(SlotsExecutor):
    """SlotsExecutor whose parts of every run but the first it sees raise (a NaN loss)."""

    def wait(self, timeout=None):
        from kfold.core.errors import TrainingError
        from kfold.training import Event

        key = next(iter(self.running))
        spec, _ = self.running[key]
        first = self.finished[0][0] if self.finished else spec.run
        if spec.run != first:
            self.running.pop(key)
            return [Event(key, "error", error=TrainingError("loss is nan"), traceback="Traceback (remote): ...")]
        return super().wait(timeout)


def test_a_run_that_fails_in_a_batch_still_ends_with_a_file_from_the_others(demo_dir, tmp_path, tiny_bert):
    clock = FakeClock()
    n_train, n_test = len(read_dataset(demo_dir / "train.tsv")), len(read_dataset(demo_dir / "test.tsv", role="test"))
    from kfold.auto._plan import Size

    settings = _settings(demo_dir, tmp_path, 3 * _one_run(demo_dir, 3))
    settings.base = settings.base.replace(backbone=tiny_bert, folds=3)
    settings.fixed_folds = True
    executor = OneRunFails(clock, Size(n_train, n_test), slow=1.0)
    lines = []
    res = run_auto(settings, clock=clock, probe=lambda cfg: SPEED, log=lines.append, executor=executor)
    assert any(line.startswith("stopped: a run failed (") and "loss is nan" in line for line in lines), lines
    assert res.path is not None and res.path.exists() and len(res.members) == 1
    assert res.members[0] == executor.finished[0][0]
    # two runs each read the files again: each file's summary line is said once in the command
    assert sum(" rows (labelled), " in line for line in lines) == 1, [l for l in lines if " rows (" in l]
    assert sum(" rows (blind), " in line or "test.tsv: " in line for line in lines) == 1


def test_auto_reports_its_runs_and_itself_to_the_trackers(demo_dir, tmp_path, tiny_bert, monkeypatch):
    # --report-to: auto's runs go through the runner's trackers (one tracker run each), and auto is one more
    # tracker run with its config, log (the plan and the chosen blend) and the blend's honest score
    import kfold.tracking._backends as backends
    from kfold.auto._plan import Size
    from tests.kfold.tracking.test_trackers import Recorder

    recorder = Recorder()
    recorder.name = "tensorboard"
    monkeypatch.setattr(backends, "make_backend", lambda *a: recorder)
    clock = FakeClock()
    size = Size(len(read_dataset(demo_dir / "train.tsv")), len(read_dataset(demo_dir / "test.tsv", role="test")))
    settings = _settings(demo_dir, tmp_path, 3 * _one_run(demo_dir, 3))
    settings.base = settings.base.replace(backbone=tiny_bert, folds=3, report_to="tensorboard")
    settings.fixed_folds = True
    lines: list[str] = []
    res = run_auto(settings, clock=clock, probe=lambda cfg: SPEED, log=lines.append, executor=SlotsExecutor(clock, size, 1.0))
    opened = [c[1] for c in recorder.calls if c[0] == "open"]
    assert opened[0] == "kfold-auto" and set(res.trained) <= set(opened[1:]) and res.trained
    ends = [c for c in recorder.calls if c[0] == "metrics" and c[1] == "kfold-auto"]
    assert ends[0][2]["blend/honest_oof_accuracy"] == pytest.approx(res.honest) and ends[0][2]["blend/members"] == len(res.members)
    assert ("artifact", "kfold-auto", "log.txt") in recorder.calls
    log = (tmp_path / "w" / "auto" / "log.txt").read_text()
    assert "plan (" in log and "chosen blend:" in log
    assert any(c[0] == "metrics" and c[1] == res.trained[0] and "oof/accuracy" in c[2] for c in recorder.calls)
    assert recorder.calls[-1][0] == "close"
