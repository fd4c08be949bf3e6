"""The driver's loop: the parts of every run in one queue, handed to an executor, their results written to the run
store as they arrive. Only this process writes the store (atomic writes, the completion record last); workers
compute and return.

A run's parts are its folds, then its refit (which starts once every fold is complete). A part is claimed under
its fold lock, so two drivers on one workdir never train the same part; one already complete is skipped. Before a
part is submitted, ``before_part`` may stop the queue (``kfold auto``: the part could not finish inside the
budget). The rules for what goes wrong:

- What a part raised (out of memory, a NaN loss), and what the driver raised while writing or assembling a run's
  results, fail that run only: its completed parts stay, it starts no further part, the other runs go on.
- A part whose worker or node died is retried (``--retries``), unless the queue is stopping.
- A stop (what ``on_fold`` or ``before_part`` raised: a pruned trial, a budget reached) submits nothing more; the
  running parts are written, and a run whose folds are all written is assembled, stop or no stop.
- The runtime lost (:class:`RuntimeLost`): one line saying what was lost, what completed and was kept, and that the
  same command resumes.
- Every failure is reported once at the end, with its own traceback (the worker's, under Ray); a stop never hides
  a failure. Every line about a run also goes to its ``log.txt``; worker lines arrive as they are written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from kfold.core.config import Config
from kfold.core.errors import RuntimeLost, StoreError, TrainingError
from kfold.core.metrics import all_scores, softmax
from kfold.core.store import REFIT, Predictions, RunDir, save_predictions
from kfold.core.textio import write_json_atomic
from kfold.tracking import log_assembled, log_epoch, log_part

from ._parts import PartResult, PartSpec, RunPayload, part_indices


@dataclass
class RunOutcome:
    """What one run's parts did in one call."""

    run: RunDir
    trained: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    busy: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    complete: bool = False
    oof_scores: dict[str, float] = field(default_factory=dict)
    majority_accuracy: float = 0.0
    auprc_over: tuple[int, int] | None = None  # labels present in the OOF gold labels / all labels


@dataclass
class Job:
    """One run as the driver holds it: its settings, store folder, fold map, data, tokenizer and shared payload."""

    cfg: Config
    run: RunDir
    fm: object  # FoldMap
    data: object  # LoadedData
    tokenizer: object
    payload: RunPayload
    outcome: RunOutcome
    folds: list[int]
    on_fold: Callable[[int, dict], None] | None = None
    handle: object = None  # the payload as the executor holds it (put once, on first use)
    stopped: bool = False  # a part failed: start no further part of this run


@dataclass
class Failure:
    """A part that failed (its exception, or None when its worker died), reported at the end."""

    job: Job
    part: str  # "fold 2", "refit", "assembly"
    error: BaseException | None
    message: str
    traceback: str = ""

    def line(self) -> str:
        """One line: the run, the part, what failed (the first line of a long message)."""
        text = str(self.error).strip() if self.error is not None else self.message
        what = f"{type(self.error).__name__}: " if self.error is not None else ""
        return f"{self.job.run.name} {self.part}: {what}{text.splitlines()[0] if text else ''}"


@dataclass
class _Running:
    job: Job
    spec: PartSpec
    lock: contextlib.ExitStack
    started: float = field(default_factory=time.monotonic)
    sent: set = field(default_factory=set)  # epochs whose numbers went to the trackers as their lines arrived


class _Driver:
    """The state of one ``run_jobs`` call (see the module docstring for its rules)."""

    def __init__(self, jobs: list[Job], executor, log: Callable[[str], None], before_part: Callable | None,
                 trackers=None):
        self.jobs, self.executor, self.log, self.before_part = jobs, executor, log, before_part
        self.trackers = trackers  # kfold.tracking.Trackers (or None): fed as parts are written, never waited for
        self.queue: list[tuple[Job, int | str]] = [(job, fold) for job in jobs for fold in job.folds]
        self.running: dict[int, _Running] = {}
        self.keys = iter(range(1 << 62))
        self.failures: list[Failure] = []
        self.failures_reported = 0
        self.stop: BaseException | None = None
        self.durations: list[float] = []
        self.done = 0
        self.log_broken = False

    # -- lines: the driver's output and the run's log.txt --------------------------------------------------------
    def say(self, job: Job | None, line: str) -> None:
        self.log(line)
        if job is not None:
            self.keep(job, [line])

    def keep(self, job: Job, lines: list[str]) -> None:
        """Lines into the run's log.txt; a log that cannot be written is said once and never stops training."""
        try:
            job.run.append_log(lines)
        except StoreError as exc:
            if not self.log_broken:
                self.log_broken = True
                self.log(f"warning: {exc} (lines go to this output only)")

    def worker_line(self, key, line: str) -> None:
        """A line a worker wrote (the executor's ``on_log``): a line that cannot be shown never stops a part."""
        entry = self.running.get(key)
        with contextlib.suppress(Exception):
            self.say(entry.job if entry else None, line)
        if self.trackers and entry is not None and isinstance(getattr(line, "entry", None), dict):
            with contextlib.suppress(Exception):  # only queues calls: a tracker never fails a part
                entry.sent.add(log_epoch(self.trackers, entry.job.run, entry.spec.part, line.entry))

    def started(self, key, device: str, node: str) -> None:
        """A part started (the executor's ``on_start``); like worker lines, never stops a part."""
        entry = self.running.get(key)
        if entry is not None:
            with contextlib.suppress(Exception):
                self.say(entry.job, f"{entry.job.run.name} {entry.spec.name}: started on {device}"
                         + (f" of {node}" if node else "") + f" (attempt {entry.spec.attempt})")

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.executor.on_start = self.started
        self.executor.on_log = self.worker_line
        for job in self.jobs:
            with contextlib.suppress(Exception):  # a record that cannot be read fails its run when its part starts
                if job.folds and _folds_complete(job):
                    self.complete(job)  # nothing to train: assemble (and queue the refit) now
        lost: RuntimeLost | None = None
        try:
            while True:
                self.fill()
                if not self.running:
                    break
                for event in self.executor.wait():
                    self.handle(event)
        except RuntimeLost as exc:  # from wait, put or submit: the runtime is gone, nothing to cancel on it
            lost = exc
        except BaseException:  # Ctrl-C, or a bug of ours: nothing more runs; what completed is kept and assembled
            try:
                self.executor.cancel()
            finally:
                self.release()
                self.assemble_finished()
                self.report_failures()
            raise
        if lost is not None:
            self.release()
            self.assemble_finished()
            self.report_failures()
            raise RuntimeLost(self.lost_line(lost)) from None
        self.finish()

    def fill(self) -> None:
        """Submit queued parts while slots are free and nothing has stopped the queue."""
        while self.queue and self.stop is None and len(self.running) < self.executor.slots:
            job, part = self.queue.pop(0)
            if job.stopped:
                continue
            if self.before_part is not None and job.run.fold_record(part) is None:  # a complete part costs nothing
                try:
                    self.before_part(job.cfg, job.run.name, part)
                except Exception as exc:  # a budget that cannot hold the part: the queue stops here
                    self.stop = exc
                    self.queue.insert(0, (job, part))
                    return
            try:
                record = self.start(job, part)
            except RuntimeLost:
                raise
            except Exception as exc:  # a corrupt record, a lock or the object store failing: this run only
                self.fail(job, part, exc, "", traceback.format_exc(), "the driver could not start it")
                continue
            if record is not None and part != REFIT:  # complete already: its score still reaches on_fold
                self.report(job, part, record)
                if _folds_complete(job):
                    self.complete(job)

    def start(self, job: Job, part: int | str) -> dict | None:
        """Claim a part and submit it. Returns its completion record when it is complete already (skipped); None
        when it was submitted or another process holds it (busy)."""
        record = job.run.fold_record(part)
        if record is not None:
            job.outcome.skipped.append(part)
            return record
        lock = contextlib.ExitStack()
        if not lock.enter_context(job.run.fold_lock(part)):
            lock.close()
            self.say(job, f"{job.run.name} {_name(part)}: another process is training it; skipping")
            job.outcome.busy.append(part)
            return None
        try:
            record = job.run.fold_record(part)
            if record is not None:  # finished by another process while we looked
                lock.close()
                job.outcome.skipped.append(part)
                return record
            keep = None
            if part == REFIT:  # kept at the weights the folds chose: their median best epoch (no row is left to choose on)
                keep = int(np.median([job.run.fold_record(f)["best_epoch"] for f in range(job.cfg.folds)]))
            # a part reads no file: the data paths stay here (a worker on another machine never sees the driver's paths)
            spec = PartSpec(job.cfg.replace(data="", test="", labels=""), job.run.name, part,
                            tuple(job.data.train.label_names), job.tokenizer.pad_token_id, len(job.tokenizer), keep)
            if job.handle is None:
                job.handle = self.executor.put(job.payload)
            key = next(self.keys)
            # a part that runs alone (nothing else running, nothing queued: a run's refit after its folds) may take
            # every core of a CPU machine
            alone = not self.running and not any(not j.stopped for j, _ in self.queue)
            self.executor.submit(key, spec, job.handle, alone=alone)
        except BaseException:
            lock.close()
            raise
        self.running[key] = _Running(job, spec, lock)
        return None

    def handle(self, event) -> None:
        """One event of the executor: write a result, retry a dead worker's part, or record a failure."""
        entry = self.running.pop(event.key)
        job, spec = entry.job, entry.spec
        if event.kind == "done":
            try:
                record = self.write(job, spec, event.result, entry.sent)
            except Exception as exc:  # the driver could not write this part (a full disk): this run only
                entry.lock.close()
                self.fail(job, spec.part, exc, "", traceback.format_exc(), "the driver could not write it")
                return
            entry.lock.close()
            job.outcome.trained.append(spec.part)
            self.done += 1
            self.durations.append(time.monotonic() - entry.started)
            self.log(self.progress())
            if spec.part != REFIT:
                self.report(job, spec.part, record)
                if _folds_complete(job):
                    self.complete(job)
        elif event.kind == "died" and spec.attempt <= job.cfg.retries and self.stop is None and not job.stopped \
                and self.may_start(job, spec.part):
            retry = dataclasses.replace(spec, attempt=spec.attempt + 1)
            self.say(job, f"{job.run.name} {spec.name}: its worker died ({event.message}); retrying on a free slot "
                     f"(attempt {retry.attempt})")
            key = next(self.keys)
            try:
                self.executor.submit(key, retry, job.handle)
            except BaseException:
                entry.lock.close()
                raise
            self.running[key] = _Running(job, retry, entry.lock)
        elif event.kind == "died":
            entry.lock.close()
            why = ("not retried: the queue is stopping" if self.stop is not None
                   else "not retried: its run has stopped" if job.stopped else "given up (--retries)")
            message = f"its worker died {spec.attempt} time(s) ({event.message}); {why}"
            self.fail(job, spec.part, None, message, "", message, stop_run=False)
        else:
            entry.lock.close()
            self.fail(job, spec.part, event.error, event.message, event.traceback,
                      f"failed ({type(event.error).__name__ if event.error is not None else event.message})")

    def may_start(self, job: Job, part) -> bool:
        """``before_part`` for a part about to be submitted again (a retry); what it raises stops the queue."""
        if self.before_part is None:
            return True
        try:
            self.before_part(job.cfg, job.run.name, part)
        except Exception as exc:
            self.stop = exc
            return False
        return True

    def fail(self, job: Job, part, error: BaseException | None, message: str, trace: str, said: str,
             stop_run: bool = True) -> None:
        """Record a failed part (or the run's assembly). What the part or the driver raised stops its run (the
        same would fail again); a part whose worker died leaves the run's other parts going (``stop_run``)."""
        name = part if part == "assembly" else _name(part)
        if part != "assembly":
            job.outcome.failed.append(part)
        self.failures.append(Failure(job, name, error, message, trace))
        if stop_run:
            job.stopped = True
            self.say(job, f"{job.run.name} {name}: {said}; no further part of this run is started; completed "
                     "parts are kept")
        else:
            self.say(job, f"{job.run.name} {name}: {said}; the same command trains it again")

    def report(self, job: Job, fold: int, record: dict) -> None:
        """Hand a complete fold's record to ``on_fold`` (until the queue stops); what it raises stops the queue."""
        if job.on_fold is None or self.stop is not None:
            return
        try:
            job.on_fold(fold, record)
        except Exception as exc:  # a pruned trial, a budget reached: raised once the running parts are written
            self.stop = exc

    def complete(self, job: Job) -> None:
        """Every fold is complete: assemble OOF and test logits (stop or no stop); with ``--refit``, queue the
        refit unless the queue has stopped. An assembly error fails this run only."""
        data, y = job.data, job.data.train.y
        try:
            job.outcome.oof_scores = assemble(job.run, job.fm, data.train.label_names, y,
                                              data.test.ids if data.test else None, data.test.y if data.test else None,
                                              job.cfg.no_relation or None)
        except Exception as exc:
            self.fail(job, "assembly", exc, "", traceback.format_exc(), "the OOF could not be assembled")
            return
        job.outcome.complete = True
        if self.trackers:
            with contextlib.suppress(Exception):  # only queues calls: a tracker never fails a run
                log_assembled(self.trackers, job.run, job.outcome.oof_scores)
        if job.cfg.refit and data.test is not None and not job.stopped:
            self.queue.append((job, REFIT))

    def assemble_finished(self) -> None:
        """After a stop of any kind: runs whose folds are all written are assembled (best effort)."""
        for job in self.jobs:
            with contextlib.suppress(Exception):
                if not job.outcome.complete and not job.stopped and _folds_complete(job):
                    job.stopped = True  # assembled only: no refit is queued now
                    self.complete(job)

    def release(self) -> None:
        for entry in self.running.values():
            entry.lock.close()
        self.running.clear()

    def write(self, job: Job, spec: PartSpec, result: PartResult, sent: set = frozenset()) -> dict:
        """The driver writes what a part returned: its logits, its model (``--save-models``), then its completion
        record (last); the trackers get the epochs not ``sent`` as their lines arrived."""
        names, fm, run = job.data.train.label_names, job.fm, job.run
        tr, va = part_indices(spec, job.payload)
        refit = spec.part == REFIT
        valid = None if refit else Predictions(np.asarray(fm.ids)[va], names, result.valid_logits, fm.hash,
                                               job.payload.y[va], np.full(len(va), spec.part))
        # the test file's labels (-1 for blind rows) travel with the logits, so a blend of refits can be scored too
        test = (Predictions(job.data.test.ids, names, result.test_logits, fm.hash, job.data.test.y)
                if job.data.test else None)
        if result.state_dict is not None:
            save_model(run.fold_dir(spec.part) / "model", result.state_dict, job.tokenizer)
        record = {**result.record, "fold_map_hash": fm.hash}
        run.write_fold(spec.part, valid, test, record)
        if self.trackers:
            with contextlib.suppress(Exception):  # only queues calls: a tracker never fails a run
                log_part(self.trackers, run, spec.part, record, sent)
        if result.log:  # lines the part kept instead of sending them as they were written
            self.keep(job, result.log)
        span = job.cfg.averaged_epochs()
        r = result.record
        chosen = (f"weights averaged over epochs {span[0]}-{span[-1]}" if span
                  else f"at epoch {r['best_epoch']}/{job.cfg.epochs}")
        score = "" if refit else f"{job.cfg.metric} {r['metrics'].get(job.cfg.metric, float('nan')):.2f} "
        self.say(job, f"{run.name} {spec.name}: {score}{chosen}, {len(tr)} train / {len(va)} valid, "
                 f"{r['wall_seconds']:.0f}s ({r['train_examples_per_s']:.1f} train ex/s, {r['padding_share'] * 100:.1f}% "
                 f"padding) on {r['device']}" + (f" of {r['node']}" if r.get("node") and r["node"] != r.get("host") else "")
                 + (f", attempt {r['attempt']}" if r.get("attempt", 1) > 1 else ""))
        return record

    def progress(self) -> str:
        """``7/15 parts done, 3 running, 0 failed, ETA 21:40`` (the ETA from the parts' mean time and the free slots)."""
        left = len(self.running) + (0 if self.stop is not None else sum(1 for job, _ in self.queue if not job.stopped))
        total = self.done + left + len(self.failures)
        eta = (time.time() + math.ceil(left / max(self.executor.slots, 1)) * float(np.mean(self.durations))
               if self.durations else time.time())
        return (f"{self.done}/{total} parts done, {len(self.running)} running, {len(self.failures)} failed"
                + (f", ETA {time.strftime('%H:%M', time.localtime(eta))}" if left else ""))

    def lost_line(self, lost: RuntimeLost) -> str:
        """What was lost, what completed and is kept, what is missing, and that the same command resumes."""
        kept = [f"{job.run.name} {_name(p)}" for job in self.jobs for p in job.outcome.trained]
        missing = sum(1 for job in self.jobs for f in list(range(job.cfg.folds)) + ([REFIT] if job.cfg.refit else [])
                      if job.run.fold_record(f) is None)
        return (f"{lost}; {len(kept)} part(s) completed in this call and kept"
                + (f" ({', '.join(kept[:6])}{', ...' if len(kept) > 6 else ''})" if kept else "")
                + f", {missing} not complete; the same command resumes (it trains only the missing parts)")

    def report_failures(self) -> None:
        """Every failure once, with its traceback, in the output and the run's log.txt (on every way out)."""
        failures, self.failures_reported = self.failures[self.failures_reported:], len(self.failures)
        for f in failures:
            lines = [f"failed: {f.line()}"] + [f"  {t}" for t in f.traceback.rstrip().splitlines()]
            self.keep(f.job, lines)
            for line in lines:
                self.log(line)

    def finish(self) -> None:
        """Report every failure once (with its traceback), then raise: the stop, else the failure(s)."""
        self.report_failures()
        if self.stop is not None:
            if self.failures:
                self.log(f"{len(self.failures)} part(s) failed before the stop (above); the stop: {self.stop}")
            raise self.stop
        if len(self.failures) == 1:
            f = self.failures[0]
            if f.error is not None:
                raise f.error
            raise TrainingError(f"{f.line()}; completed parts are kept, the same command trains the missing ones")
        if self.failures:
            listed = "; ".join(f.line() for f in self.failures)
            raise TrainingError(f"{len(self.failures)} parts failed ({listed}); completed parts are kept, the same "
                                "command trains the missing ones")


def run_jobs(jobs: list[Job], executor, log: Callable[[str], None] = print, *,
             before_part: Callable[[Config, str, int | str], None] | None = None, trackers=None) -> None:
    """Train every missing part of ``jobs`` through ``executor`` and write each result as it arrives; assemble
    each run's OOF once its folds are complete, then queue its refit (see the module docstring for stops and
    failures). ``before_part(config, run name, part)`` is called before a part is submitted; what it raises stops
    the queue. ``trackers`` (:class:`kfold.tracking.Trackers`): each written part's epoch history and each assembled
    run's OOF scores are queued to them (the runs must have been opened there).

    Raises the part's own exception when one part failed, a TrainingError naming them when several did (or when a
    part's worker died more often than ``--retries``), what ``on_fold`` or ``before_part`` raised, or
    RuntimeLost (one line: what was lost and kept) when the executor's runtime is gone."""
    _Driver(jobs, executor, log, before_part, trackers).run()


def _name(part: int | str) -> str:
    return "refit" if part == REFIT else f"fold {part}"


def _folds_complete(job: Job) -> bool:
    return not job.outcome.complete and all(job.run.fold_record(f) is not None for f in range(job.cfg.folds))


def save_model(folder: Path, state: dict, tokenizer) -> None:
    """Checkpoint (``--save-models``): state dict and tokenizer, written to a temporary folder then renamed."""
    import torch

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "model.pt")
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def assemble(run: RunDir, fm, label_names: tuple[str, ...], y: np.ndarray, test_ids, test_y,
             no_relation: str | None) -> dict[str, float]:
    """Join the folds' validation logits into OOF logits (each training id exactly once, in data order),
    average the fold models' test logits, write both and the summary; returns OOF scores."""
    from kfold.core.store import load_predictions

    ids = np.asarray(fm.ids)
    position = {i: n for n, i in enumerate(ids)}
    oof = np.full((len(ids), len(label_names)), np.nan, dtype=np.float32)
    seen = np.zeros(len(ids), dtype=np.int64)
    test_folds, records = [], []
    for fold in range(fm.k):
        records.append(run.fold_record(fold))
        valid = load_predictions(run.fold_dir(fold) / "valid.npz")
        expected = set(ids[fm.valid_index(fold)])
        if set(valid.ids) != expected or len(valid.ids) != len(expected):
            raise StoreError(f"{valid.path}: field 'ids': found ids that are not fold {fold}'s validation part")
        if valid.label_names != label_names:
            raise StoreError(f"{valid.path}: field 'label_names': found other label names than the run's")
        rows = np.array([position[i] for i in valid.ids])
        oof[rows] = valid.logits
        seen[rows] += 1
        if test_ids is not None:
            test = load_predictions(run.fold_dir(fold) / "test.npz")
            if not np.array_equal(test.ids, test_ids):
                raise StoreError(f"{test.path}: field 'ids': found other test ids than the run's test file")
            test_folds.append(test.logits)
    if not (seen == 1).all():
        raise StoreError(f"{run.root}: OOF rows covered {seen.min()}..{seen.max()} times, expected exactly once")
    save_predictions(run.oof_path, Predictions(ids, label_names, oof, fm.hash, y, fm.folds.copy()))
    if test_folds:
        stack = np.stack(test_folds).astype(np.float32)
        save_predictions(run.test_path, Predictions(np.asarray(test_ids), label_names, stack.mean(0), fm.hash,
                                                    None if test_y is None else test_y, None, stack))
    scores = all_scores(y, softmax(oof), label_names, no_relation)
    write_json_atomic(run.summary_path, {
        "run": run.name, "oof": scores, "fold_map_hash": fm.hash,
        "folds": [{"fold": f, "best_epoch": r["best_epoch"], **r["metrics"], "train_seconds": r["train_seconds"],
                   "wall_seconds": r.get("wall_seconds"), "device": r.get("device"), "node": r.get("node"),
                   "attempt": r.get("attempt", 1)} for f, r in enumerate(records)],
    })
    return scores
