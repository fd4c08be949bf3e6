"""A fake executor that replays a script of events, and jobs built from arrays: the scheduler (``run_jobs``)
driven deterministically in milliseconds, with no model and no engine.

A script is a list of steps, one per ``wait()``: each step is a list of ``(run, part, kind, extra)`` for parts
already submitted (``kind``: done, died, error; ``extra``: the exception of an error), or a callable that raises
(the runtime lost, Ctrl-C). Parts not named in a step keep running.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from kfold.core.config import Config
from kfold.core.metrics import auprc_labels
from kfold.core.store import REFIT, RunDir
from kfold.training import Event, Job, PartResult, RunOutcome, RunPayload
from kfold.training._folds import FoldMap, _content_hash

LABELS = ("no_relation", "a", "b")


class ScriptedExecutor:
    """Replays ``script`` (see the module docstring); records what was submitted, put, cancelled."""

    def __init__(self, script: list, slots: int = 2):
        self.slots, self.script = slots, list(script)
        self.description = f"{slots} scripted slots"
        self.on_start = lambda key, device, node: None
        self.on_log = lambda key, line: None
        self.running: dict[object, object] = {}  # key -> spec
        self.submitted: list[tuple[str, object, int]] = []  # (run, part, attempt)
        self.alone: list[bool] = []
        self.cancelled = False
        self.lines: dict[tuple[str, object], list[str]] = {}  # log lines a part "writes" when it starts
        self.pending: list = []  # parts whose start (and lines) the next wait() reports

    def check(self, backbones):
        pass

    def put(self, payload):
        return payload

    def submit(self, key, spec, payload, *, alone=False):
        self.running[key] = (spec, payload)
        self.submitted.append((spec.run, spec.part, spec.attempt))
        self.alone.append(alone)
        self.pending.append((key, spec))

    def wait(self, timeout=None):
        if not self.script:
            raise AssertionError(f"the script ran out with parts running: {sorted(map(str, self.running))}")
        for key, spec in self.pending:  # as a worker does: it starts, then writes its lines while it runs
            self.on_start(key, "cpu", "")
            for line in self.lines.get((spec.run, spec.part), []):
                self.on_log(key, line)
        self.pending.clear()
        step = self.script.pop(0)
        if callable(step):
            step()
        events = []
        for run, part, kind, extra in step:
            key = next(k for k, (spec, _) in self.running.items() if spec.run == run and spec.part == part)
            spec, payload = self.running.pop(key)
            if kind == "done":
                events.append(Event(key, "done", result=fake_result(spec, payload)))
            elif kind == "died":
                events.append(Event(key, "died", message="WorkerCrashedError: the worker died"))
            else:
                events.append(Event(key, "error", error=extra, traceback=f"Traceback (remote):\n  raise {extra!r}"))
        return events

    def cancel(self):
        self.cancelled = True
        self.running.clear()

    def close(self):
        pass


def fake_result(spec, payload) -> PartResult:
    """Logits of the right shape for the part's validation and test rows, and a completion record."""
    rng = np.random.default_rng(hash((spec.run, str(spec.part))) % 2**32)
    n_valid = 0 if spec.part == REFIT else int((payload.folds == spec.part).sum())
    valid = None if spec.part == REFIT else rng.normal(size=(n_valid, len(LABELS))).astype(np.float32)
    names = spec.label_names or LABELS
    if valid is not None:
        valid = rng.normal(size=(n_valid, len(names))).astype(np.float32)
    test = rng.normal(size=(len(payload.test), len(names))).astype(np.float32) if payload.test is not None else None
    record = {"best_epoch": 1, "metrics": {"accuracy": 50.0}, "history": [], "n_train": 1, "n_valid": n_valid,
              "train_seconds": 1.0, "wall_seconds": 1.0, "train_examples_per_s": 1.0, "padding_share": 0.0,
              "micro_batch": 1, "accum_steps": 1, "device": "cpu", "attempt": spec.attempt}
    return PartResult(valid, test, record)


@dataclass
class _Test:
    """The test file's ids and labels (and, as a payload, its length)."""

    ids: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class _Tokenizer:
    pad_token_id = 0

    def __len__(self) -> int:
        return 100


def fake_job(workdir: Path, name: str, *, folds: int = 2, rows: int = 12, test_rows: int = 4, refit: bool = False,
             retries: int = 3, on_fold=None) -> Job:
    """A job over ``rows`` training rows (labels round-robin) and ``test_rows`` test rows, without features."""
    ids = tuple(f"id{i}" for i in range(rows))
    y = np.arange(rows) % len(LABELS)
    fold_of = np.arange(rows) % folds
    fm = FoldMap(ids, fold_of, folds, 42, "none", "d" * 64, _content_hash(ids, fold_of, folds))
    test = _Test(np.array([f"t{i}" for i in range(test_rows)]), np.full(test_rows, -1))
    data = SimpleNamespace(train=SimpleNamespace(label_names=LABELS, y=y), test=test if test_rows else None)
    cfg = Config(folds=folds, refit=refit, retries=retries, cluster="none")
    run = RunDir(Path(workdir) / "runs" / name)
    payload = RunPayload(None, test if test_rows else None, None, y, fold_of)
    outcome = RunOutcome(run, auprc_over=auprc_labels(y, len(LABELS)))
    return Job(cfg, run, fm, data, _Tokenizer(), payload, outcome, list(range(folds)), on_fold)
