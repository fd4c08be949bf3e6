"""The driver's loop: the parts of every run in one queue, handed to an executor, their results written to the run
store as they arrive. Only this process writes the store (atomic writes, the completion record last); workers
compute and return.

A run's parts are its folds, then its refit (which starts once every fold is complete). A part is claimed under
its fold lock, so two drivers on one workdir never train the same part; one already complete is skipped. What a
part raised (out of memory, a NaN loss) is reported once and not retried, and that run starts no further part
(they would fail alike); other runs go on. A part whose worker or node died is retried, up to ``--retries`` times.
An exception raised by ``on_fold`` (a pruned trial, a budget reached) stops the queue once the running parts are
written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from kfold.core.config import Config
from kfold.core.errors import ConfigError, StoreError, TrainingError
from kfold.core.metrics import all_scores, softmax
from kfold.core.store import REFIT, Predictions, RunDir, save_predictions
from kfold.core.textio import write_json_atomic

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
    stopped: bool = False  # a part raised: start no further part of this run


@dataclass
class _Running:
    job: Job
    spec: PartSpec
    lock: contextlib.ExitStack
    started: float = field(default_factory=time.monotonic)


def run_jobs(jobs: list[Job], executor, log: Callable[[str], None] = print) -> None:
    """Train every missing part of ``jobs`` through ``executor`` and write each result as it arrives; assemble
    each run's OOF once its folds are complete, then queue its refit. Raises the part's own exception when one
    part failed, a TrainingError naming them when several did, or what ``on_fold`` raised."""
    queue: list[tuple[Job, int | str]] = [(job, fold) for job in jobs for fold in job.folds]
    running: dict[int, _Running] = {}
    keys = iter(range(1 << 62))
    failures: list[tuple[Job, PartSpec, BaseException | None, str]] = []
    stop: BaseException | None = None
    durations: list[float] = []
    counts = {"done": 0, "total": 0}

    def started(key, device: str, node: str) -> None:
        if key in running:
            entry = running[key]
            log(f"{entry.job.run.name} {entry.spec.name}: started on {device}" + (f" of {node}" if node else "")
                + f" (attempt {entry.spec.attempt})")

    executor.on_start = started
    for job in jobs:
        if job.folds and all(job.run.fold_record(f) is not None for f in range(job.cfg.folds)):
            _complete(job, queue, log)  # nothing to train: assemble (and queue the refit) now
    try:
        while True:
            while queue and stop is None and len(running) < executor.slots:
                job, part = queue.pop(0)
                if job.stopped:
                    continue
                record = _start(job, part, executor, running, keys, counts, log)
                if record is not None and part != REFIT:  # complete already: its score still reaches on_fold
                    stop = _report(job, part, record)
                    if stop is None and _folds_complete(job):
                        _complete(job, queue, log)
            if not running:
                break
            for event in executor.wait():
                entry = running.pop(event.key)
                job, spec = entry.job, entry.spec
                if event.kind == "done":
                    record = _write_part(job, spec, event.result, log)
                    entry.lock.close()
                    job.outcome.trained.append(spec.part)
                    counts["done"] += 1
                    durations.append(time.monotonic() - entry.started)
                    log(_progress(counts, running, failures, durations, executor.slots, queue))
                    if spec.part != REFIT and stop is None:
                        stop = _report(job, spec.part, record)
                        if stop is None and _folds_complete(job):
                            _complete(job, queue, log)
                elif event.kind == "died" and spec.attempt <= job.cfg.retries:
                    retry = dataclasses.replace(spec, attempt=spec.attempt + 1)
                    log(f"{job.run.name} {spec.name}: its worker died ({event.message}); retrying on a free slot "
                        f"(attempt {retry.attempt})")
                    key = next(keys)
                    executor.submit(key, retry, job.handle)
                    running[key] = _Running(job, retry, entry.lock)
                else:
                    entry.lock.close()
                    job.outcome.failed.append(spec.part)
                    failures.append((job, spec, event.error, event.message))
                    if event.kind == "error":
                        job.stopped = True
                        # the error itself is reported once, when the queue is done (with its advice)
                        log(f"{job.run.name} {spec.name}: failed ({type(event.error).__name__}); no further part of "
                            "this run is started; completed parts are kept")
                    else:
                        log(f"{job.run.name} {spec.name}: its worker died {spec.attempt} time(s) ({event.message}); "
                            "given up (--retries); the same command trains it again")
    except BaseException:
        executor.cancel()
        for entry in running.values():
            entry.lock.close()
        raise
    if stop is not None:
        raise stop
    if len(failures) == 1 and failures[0][2] is not None:
        raise failures[0][2]
    if failures:
        listed = "; ".join(f"{job.run.name} {spec.name}: {exc or message}" for job, spec, exc, message in failures)
        raise TrainingError(f"{len(failures)} parts failed ({listed}); completed parts are kept, the same command "
                            "trains the missing ones")


def _report(job: Job, fold: int, record: dict) -> Exception | None:
    """Hand a complete fold's record to ``on_fold``; what it raises stops the queue (returned, raised later)."""
    if job.on_fold is None:
        return None
    try:
        job.on_fold(fold, record)
    except Exception as exc:  # a pruned trial, a budget reached: raised once the running parts are written
        return exc
    return None


def _start(job: Job, part: int | str, executor, running: dict, keys, counts: dict, log) -> dict | None:
    """Claim a part and submit it. Returns its completion record when it is complete already (skipped); None when
    it was submitted or another process holds it (busy)."""
    record = job.run.fold_record(part)
    if record is not None:
        job.outcome.skipped.append(part)
        return record
    lock = contextlib.ExitStack()
    if not lock.enter_context(job.run.fold_lock(part)):
        lock.close()
        log(f"{job.run.name} {_name(part)}: another process is training it; skipping")
        job.outcome.busy.append(part)
        return None
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
        job.handle = executor.put(job.payload)
    key = next(keys)
    executor.submit(key, spec, job.handle)
    running[key] = _Running(job, spec, lock)
    counts["total"] += 1
    return None


def _name(part: int | str) -> str:
    return "refit" if part == REFIT else f"fold {part}"


def _folds_complete(job: Job) -> bool:
    return not job.outcome.complete and all(job.run.fold_record(f) is not None for f in range(job.cfg.folds))


def _complete(job: Job, queue: list, log) -> None:
    """Every fold is complete: assemble OOF and test logits; with ``--refit``, queue the refit."""
    data, y = job.data, job.data.train.y
    job.outcome.oof_scores = assemble(job.run, job.fm, data.train.label_names, y, data.test.ids if data.test else None,
                                      data.test.y if data.test else None, job.cfg.no_relation or None)
    job.outcome.complete = True
    if job.cfg.refit:
        if data.test is None:
            raise ConfigError("--refit trains one more model on every row to predict the test file; pass --test")
        queue.append((job, REFIT))


def _write_part(job: Job, spec: PartSpec, result: PartResult, log) -> dict:
    """The driver writes what a part returned: its logits, its model (``--save-models``), then its completion
    record (last)."""
    names, fm, run = job.data.train.label_names, job.fm, job.run
    tr, va = part_indices(spec, job.payload)
    refit = spec.part == REFIT
    valid = None if refit else Predictions(np.asarray(fm.ids)[va], names, result.valid_logits, fm.hash, job.payload.y[va],
                                           np.full(len(va), spec.part))
    # the test file's labels (-1 for blind rows) travel with the logits, so a blend of refits can be scored too
    test = Predictions(job.data.test.ids, names, result.test_logits, fm.hash, job.data.test.y) if job.data.test else None
    if result.state_dict is not None:
        save_model(run.fold_dir(spec.part) / "model", result.state_dict, job.tokenizer)
    record = {**result.record, "fold_map_hash": fm.hash}
    run.write_fold(spec.part, valid, test, record)
    span = job.cfg.averaged_epochs()
    r = result.record
    chosen = f"weights averaged over epochs {span[0]}-{span[-1]}" if span else f"at epoch {r['best_epoch']}/{job.cfg.epochs}"
    score = "" if refit else f"{job.cfg.metric} {r['metrics'].get(job.cfg.metric, float('nan')):.2f} "
    log(f"{run.name} {spec.name}: {score}{chosen}, {len(tr)} train / {len(va)} valid, {r['wall_seconds']:.0f}s "
        f"({r['train_examples_per_s']:.1f} train ex/s, {r['padding_share'] * 100:.1f}% padding) on {r['device']}"
        + (f" of {r['node']}" if r.get("node") and r["node"] != r.get("host") else "")
        + (f", attempt {r['attempt']}" if r.get("attempt", 1) > 1 else ""))
    return record


def _progress(counts: dict, running: dict, failures: list, durations: list, slots: int, queue: list) -> str:
    """``7/15 parts done, 3 running, 0 failed, ETA 21:40`` (the ETA from the parts' mean time and the free slots)."""
    left = len(running) + sum(1 for job, _ in queue if not job.stopped)
    total = counts["done"] + left + len(failures)
    eta = time.time() + math.ceil(left / max(slots, 1)) * float(np.mean(durations)) if durations else time.time()
    return (f"{counts['done']}/{total} parts done, {len(running)} running, {len(failures)} failed"
            + (f", ETA {time.strftime('%H:%M', time.localtime(eta))}" if left else ""))


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
