"""The scheduler's stop and error paths, driven by a scripted fake executor (tests/kfold/training/scripted.py):
done, died, raised, out of order, a stop raised mid-flight, results arriving after the stop, the driver failing to
write, the runtime lost, Ctrl-C. Deterministic, milliseconds, no model and no engine."""

from __future__ import annotations

import numpy as np
import pytest

from kfold.core.errors import RuntimeLost, TrainingError
from kfold.core.store import REFIT, load_predictions
from kfold.training import run_jobs

from .scripted import ScriptedExecutor, fake_job


class Stop(Exception):
    """What ``on_fold`` raises (a budget reached, a pruned trial)."""


def _lines():
    out: list[str] = []
    return out, out.append


def test_a_run_whose_last_fold_lands_after_the_stop_is_still_assembled(tmp_path):
    # item 1: two slots, both folds of A in flight; the first reports and on_fold stops the queue; the second
    # arrives after the stop: A has every fold, so its OOF is assembled (and its refit is not started)
    def on_fold(fold, record):
        raise Stop("budget reached")

    a = fake_job(tmp_path, "a", refit=True, on_fold=on_fold)
    b = fake_job(tmp_path, "b")
    ex = ScriptedExecutor([[("a", 0, "done", None)], [("a", 1, "done", None)]])
    lines, log = _lines()
    with pytest.raises(Stop):
        run_jobs([a, b], ex, log)
    assert a.run.oof_path.exists() and a.outcome.complete
    assert ("a", REFIT, 1) not in ex.submitted and not list(b.run.root.glob("fold*/done.json"))
    oof = load_predictions(a.run.oof_path)
    assert list(oof.ids) == list(a.fm.ids) and np.isfinite(oof.logits).all()


def test_results_out_of_order_are_written_to_their_own_parts(tmp_path):
    a, b = fake_job(tmp_path, "a"), fake_job(tmp_path, "b")
    ex = ScriptedExecutor([[("a", 1, "done", None)], [("b", 0, "done", None), ("a", 0, "done", None)],
                           [("b", 1, "done", None)]])
    run_jobs([a, b], ex, lambda m: None)
    assert a.outcome.complete and b.outcome.complete
    for job in (a, b):
        for fold in (0, 1):
            valid = load_predictions(job.run.fold_dir(fold) / "valid.npz")
            assert set(valid.ids) == {job.fm.ids[i] for i in job.fm.valid_index(fold)}


def test_a_driver_failure_writing_one_result_fails_that_run_only(tmp_path, monkeypatch):
    # item 2: writing run a's fold 1 fails (a full disk); nothing is cancelled, run b completes, a's fold 0 stays,
    # and the lock of the part that failed is free at once (not when the traceback is collected)
    from kfold.core.store import RunDir

    real = RunDir.write_fold

    def write_fold(self, fold, valid, test, record):
        if self.name == "a" and fold == 1:
            raise OSError(28, "No space left on device")
        real(self, fold, valid, test, record)

    monkeypatch.setattr(RunDir, "write_fold", write_fold)
    a, b = fake_job(tmp_path, "a"), fake_job(tmp_path, "b")
    ex = ScriptedExecutor([[("a", 0, "done", None)], [("a", 1, "done", None)], [("b", 0, "done", None)],
                           [("b", 1, "done", None)]])
    lines, log = _lines()
    with pytest.raises(OSError, match="No space left") as info:
        run_jobs([a, b], ex, log)
    assert not ex.cancelled and b.outcome.complete and a.outcome.failed == [1] and not a.outcome.complete
    assert a.run.fold_record(0) is not None and a.run.fold_record(1) is None
    with a.run.fold_lock(1) as got:
        assert got, "the failed part's lock is still held"
    assert info.value.errno == 28
    assert any(line.startswith("failed: a fold 1: OSError") for line in lines), lines
    assert "failed: a fold 1: OSError" in a.run.log_path.read_text()


def test_an_assembly_error_fails_that_run_only(tmp_path, monkeypatch):
    import kfold.training._schedule as schedule

    real = schedule.assemble

    def assemble(run, *args):
        if run.name == "a":
            raise ValueError("corrupt logits")
        return real(run, *args)

    monkeypatch.setattr(schedule, "assemble", assemble)
    a, b = fake_job(tmp_path, "a", refit=True), fake_job(tmp_path, "b")
    ex = ScriptedExecutor([[("a", 0, "done", None), ("a", 1, "done", None)], [("b", 0, "done", None)],
                           [("b", 1, "done", None)]])
    with pytest.raises(ValueError, match="corrupt logits"):
        run_jobs([a, b], ex, lambda m: None)
    assert b.outcome.complete and not a.outcome.complete and ("a", REFIT, 1) not in ex.submitted


def test_a_raised_part_is_reported_with_its_traceback_and_a_later_stop_does_not_hide_it(tmp_path):
    # item 6: a's fold 0 raises (its remote traceback comes with it); then b's fold reports and on_fold stops the
    # queue: the stop is raised, and the failure was reported first, traceback included
    def on_fold(fold, record):
        raise Stop("pruned")

    a = fake_job(tmp_path, "a")
    b = fake_job(tmp_path, "b", on_fold=on_fold)
    ex = ScriptedExecutor([[("a", 0, "error", TrainingError("loss is nan"))], [("a", 1, "done", None)],
                           [("b", 0, "done", None)], [("b", 1, "done", None)]], slots=2)
    lines, log = _lines()
    with pytest.raises(Stop):
        run_jobs([a, b], ex, log)
    text = "\n".join(lines)
    assert "failed: a fold 0: TrainingError: loss is nan" in text and "Traceback (remote):" in text
    assert "1 part(s) failed before the stop (above)" in text
    assert "Traceback (remote):" in a.run.log_path.read_text()


def test_worker_lines_reach_the_output_and_the_runs_log_as_written(tmp_path):
    a = fake_job(tmp_path, "a")
    ex = ScriptedExecutor([[("a", 0, "done", None)], [("a", 1, "done", None)]])
    ex.lines[("a", 0)] = ["a fold 0 epoch 1: loss 1.0000 (0s)"]
    lines, log = _lines()
    run_jobs([a], ex, log)
    assert "a fold 0 epoch 1: loss 1.0000 (0s)" in lines
    log_txt = a.run.log_path.read_text()
    assert "a fold 0 epoch 1: loss 1.0000 (0s)" in log_txt and "a fold 0: started on cpu (attempt 1)" in log_txt


def test_a_dead_worker_is_retried_but_not_after_the_stop(tmp_path):
    # item 7: before the stop a died part is retried (attempt 2); after it, it is reported and not retried
    calls = []

    def on_fold(fold, record):
        calls.append(fold)
        raise Stop("budget reached")

    a = fake_job(tmp_path, "a", folds=3, on_fold=on_fold)
    ex = ScriptedExecutor([[("a", 0, "died", None)], [("a", 0, "done", None)], [("a", 1, "died", None)]])
    lines, log = _lines()
    with pytest.raises(Stop):
        run_jobs([a], ex, log)
    assert ("a", 0, 2) in ex.submitted and ("a", 1, 2) not in ex.submitted
    assert any("a fold 1: its worker died 1 time(s)" in line and "not retried: the queue is stopping" in line
               for line in lines), lines


def test_the_pre_submit_hook_keeps_a_part_that_cannot_finish_from_starting(tmp_path):
    # item 7: the refit, the longest part, is refused by the hook; the folds were written and assembled
    asked = []

    def before_part(cfg, run, part):
        asked.append((run, part))
        if part == REFIT:
            raise Stop("refit would not finish inside the budget")

    a = fake_job(tmp_path, "a", refit=True)
    ex = ScriptedExecutor([[("a", 0, "done", None), ("a", 1, "done", None)]])
    with pytest.raises(Stop, match="refit would not finish"):
        run_jobs([a], ex, lambda m: None, before_part=before_part)
    assert asked == [("a", 0), ("a", 1), ("a", REFIT)]
    assert ("a", REFIT, 1) not in ex.submitted and a.run.oof_path.exists()


def test_a_worker_that_dies_more_often_than_retries_says_so_in_the_error(tmp_path):
    a = fake_job(tmp_path, "a", retries=1)
    ex = ScriptedExecutor([[("a", 0, "died", None)], [("a", 0, "died", None)], [("a", 1, "done", None)]])
    with pytest.raises(TrainingError, match=r"a fold 0: its worker died 2 time\(s\) .*given up \(--retries\)"):
        run_jobs([a], ex, lambda m: None)
    assert a.run.fold_record(1) is not None


def test_the_runtime_lost_ends_with_one_line_of_what_was_kept_and_finished_runs_assembled(tmp_path):
    def lost():
        raise RuntimeLost("the Ray runtime was lost: this machine's Ray node stopped")

    a, b = fake_job(tmp_path, "a"), fake_job(tmp_path, "b")
    ex = ScriptedExecutor([[("a", 0, "done", None)], [("a", 1, "done", None)], lost])
    with pytest.raises(RuntimeLost) as info:
        run_jobs([a, b], ex, lambda m: None)
    text = str(info.value)
    assert "\n" not in text and text.startswith("the Ray runtime was lost: this machine's Ray node stopped; ")
    assert "2 part(s) completed in this call and kept (a fold 0, a fold 1), 2 not complete" in text
    assert "the same command resumes" in text
    assert a.outcome.complete and a.run.oof_path.exists()
    for fold in (0, 1):
        with b.run.fold_lock(fold) as got:
            assert got


def test_ctrl_c_cancels_what_runs_releases_its_locks_and_keeps_what_completed(tmp_path):
    def interrupt():
        raise KeyboardInterrupt

    a = fake_job(tmp_path, "a", folds=3)
    ex = ScriptedExecutor([[("a", 0, "done", None)], interrupt])
    with pytest.raises(KeyboardInterrupt):
        run_jobs([a], ex, lambda m: None)
    assert ex.cancelled and a.run.fold_record(0) is not None
    with a.run.fold_lock(1) as got:
        assert got


def test_a_runs_last_part_is_submitted_alone(tmp_path):
    a = fake_job(tmp_path, "a", refit=True)
    ex = ScriptedExecutor([[("a", 0, "done", None), ("a", 1, "done", None)], [("a", REFIT, "done", None)]])
    run_jobs([a], ex, lambda m: None)
    assert ex.alone == [False, False, True] and a.run.fold_record(REFIT) is not None


def test_a_part_that_cannot_be_started_fails_that_run_only(tmp_path):
    # a corrupt completion record of b's fold 0 (the driver reads it before it claims the part): b fails, a goes on
    a, b = fake_job(tmp_path, "a"), fake_job(tmp_path, "b")
    b.run.fold_dir(0).mkdir(parents=True)
    (b.run.fold_dir(0) / "done.json").write_text("{not json")
    ex = ScriptedExecutor([[("a", 0, "done", None), ("a", 1, "done", None)], [("b", 1, "done", None)]], slots=3)
    lines, log = _lines()
    with pytest.raises(Exception, match="done.json"):
        run_jobs([a, b], ex, log)
    assert not ex.cancelled and a.outcome.complete and b.outcome.failed == [0]
    assert any(line.startswith("b fold 0: the driver could not start it") for line in lines), lines


def test_the_runtime_lost_while_submitting_is_the_same_one_line(tmp_path):
    class LostOnSubmit(ScriptedExecutor):
        def submit(self, key, spec, payload, *, alone=False):
            if spec.part == 1:
                raise RuntimeLost("the Ray runtime was lost: the cluster's head (10.0.0.1:6379) cannot be reached")
            super().submit(key, spec, payload, alone=alone)

    a = fake_job(tmp_path, "a")
    ex = LostOnSubmit([[("a", 0, "done", None)]], slots=1)
    with pytest.raises(RuntimeLost, match=r"^the Ray runtime was lost: the cluster's head .*; 1 part\(s\) completed "
                                          r"in this call and kept \(a fold 0\), 1 not complete; the same command"):
        run_jobs([a], ex, lambda m: None)


def test_a_callback_that_raises_never_stops_a_part(tmp_path):
    # the driver's output failing on a worker's line (a closed pipe) loses that line, not the part
    a = fake_job(tmp_path, "a")
    ex = ScriptedExecutor([[("a", 0, "done", None)], [("a", 1, "done", None)]])
    ex.lines[("a", 0)] = ["a fold 0 epoch 1: loss 1.0000 (0s)"]

    def log(line):
        if line.startswith("a fold 0 epoch 1:") or ": started on cpu" in line:  # the worker's lines only
            raise BrokenPipeError(32, "Broken pipe")

    run_jobs([a], ex, log)
    assert a.outcome.complete and not ex.cancelled


def test_a_retry_asks_the_budget_hook_and_a_stopped_run_is_not_retried(tmp_path):
    asked = []

    def before_part(cfg, run, part):
        asked.append((run, part))
        if len(asked) > 2:  # the retry of a fold 0 would not fit
            raise Stop("fold 0 would not finish inside the budget")

    a = fake_job(tmp_path, "a")
    ex = ScriptedExecutor([[("a", 0, "died", None)], [("a", 1, "done", None)]])
    lines, log = _lines()
    with pytest.raises(Stop, match="would not finish"):
        run_jobs([a], ex, log, before_part=before_part)
    assert asked == [("a", 0), ("a", 1), ("a", 0)] and ("a", 0, 2) not in ex.submitted
    # a run stopped by its own failure: its dying part is not retried
    b = fake_job(tmp_path, "b", folds=3)
    ex = ScriptedExecutor([[("b", 0, "error", TrainingError("loss is nan"))], [("b", 1, "died", None)]], slots=2)
    lines, log = _lines()
    with pytest.raises(TrainingError):
        run_jobs([b], ex, log)
    assert ("b", 1, 2) not in ex.submitted
    assert any("b fold 1: its worker died 1 time(s)" in line and "not retried: its run has stopped" in line
               for line in lines), lines


def test_the_budget_hook_is_not_asked_about_complete_parts(tmp_path):
    # a resume where only the refit is missing: the folds cost nothing, the refit is asked about (and trained)
    def no_refit(cfg, run, part):
        if part == REFIT:
            raise Stop("no time")

    a = fake_job(tmp_path, "a", refit=True)
    with pytest.raises(Stop):
        run_jobs([a], ScriptedExecutor([[("a", 0, "done", None), ("a", 1, "done", None)]]), lambda m: None,
                 before_part=no_refit)
    assert a.run.oof_path.exists() and a.run.fold_record(REFIT) is None
    again = fake_job(tmp_path, "a", refit=True)
    asked = []
    run_jobs([again], ScriptedExecutor([[("a", REFIT, "done", None)]]), lambda m: None,
             before_part=lambda cfg, run, part: asked.append(part))
    assert asked == [REFIT] and again.run.fold_record(REFIT) is not None


def test_ctrl_c_still_reports_the_failures_before_it(tmp_path):
    def interrupt():
        raise KeyboardInterrupt

    a = fake_job(tmp_path, "a", folds=3)
    ex = ScriptedExecutor([[("a", 0, "error", TrainingError("loss is nan"))], interrupt], slots=3)
    lines, log = _lines()
    with pytest.raises(KeyboardInterrupt):
        run_jobs([a], ex, log)
    assert "failed: a fold 0: TrainingError: loss is nan" in lines and ex.cancelled
