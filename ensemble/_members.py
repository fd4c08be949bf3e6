"""Selecting ensemble members from the run store and checking they can be blended. Torch-free."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kfold.core.errors import ConfigError, StoreError
from kfold.core.store import REFIT, Predictions, RunDir, list_runs, load_predictions


@dataclass
class Members:
    """OOF and test logits of the members, aligned on ids (never on row order)."""

    names: list[str]
    oof: np.ndarray  # [M, n, C] float32
    y: np.ndarray  # [n]
    folds: np.ndarray  # [n]
    ids: np.ndarray
    label_names: tuple[str, ...]
    fold_map_hash: str
    test: np.ndarray | None = None  # [M, n_test, C]
    test_ids: np.ndarray | None = None
    test_y: np.ndarray | None = None


def select_runs(workdir: str | Path, selection: str = "all") -> list[RunDir]:
    """Runs named by ``all``, a glob (``split-*``) or a comma-separated list of names/globs.

    Only complete runs (with ``oof.npz``) are members; a name that matches nothing is an error.
    """
    runs = list_runs(workdir)
    if not runs:
        raise ConfigError(f"{workdir}: no runs found (run `kfold run` first, or pass --workdir)")
    if selection in ("", "all", "*"):
        chosen = runs
    else:
        chosen = []
        for pattern in [p.strip() for p in selection.split(",") if p.strip()]:
            hits = [r for r in runs if fnmatch.fnmatchcase(r.name, pattern)]
            if not hits:
                raise ConfigError(f"--runs: '{pattern}' matches no run in {workdir}/runs; expected one of "
                                  f"[{', '.join(r.name for r in runs)}]")
            chosen.extend(h for h in hits if h.name not in {c.name for c in chosen})
    complete = [r for r in chosen if r.oof_path.exists()]
    incomplete = [r.name for r in chosen if not r.oof_path.exists()]
    if not complete:
        raise ConfigError(f"{workdir}: none of the selected runs is complete ({', '.join(incomplete)}); "
                          "finish them with `kfold run`")
    return complete


def _aligned(pred: Predictions, ids: np.ndarray, what: str) -> Predictions:
    """``pred`` reordered to ``ids``; refuses other id sets."""
    if np.array_equal(pred.ids, ids):
        return pred
    if len(pred.ids) != len(ids) or set(pred.ids) != set(ids):
        extra = sorted(set(pred.ids) - set(ids))[:3]
        missing = sorted(set(ids) - set(pred.ids))[:3]
        raise StoreError(f"{pred.path}: field 'ids': other {what} ids than the first member "
                         f"(extra {extra}, missing {missing})")
    pos = {i: n for n, i in enumerate(pred.ids)}
    idx = np.array([pos[i] for i in ids])
    return Predictions(ids, pred.label_names, pred.logits[idx], pred.fold_map_hash,
                       None if pred.y is None else pred.y[idx], None if pred.folds is None else pred.folds[idx],
                       None, pred.path)


#: Where a member's test logits come from: the mean of its fold models, its refit on every row, or both averaged.
TEST_SOURCES = ("folds", "refit", "both")
#: The source used when every member has a complete refit and none is asked for (measured on SemEval: README,
#: "Refit or fold models for the test file"); members without refits use their fold models.
DEFAULT_TEST_SOURCE = "refit"


def resolve_test_source(runs: list[RunDir], requested: str | None) -> str:
    """``requested``, else DEFAULT_TEST_SOURCE when every run has a complete refit, else ``folds``."""
    if requested:
        return requested
    return DEFAULT_TEST_SOURCE if runs and all(r.fold_record(REFIT) is not None for r in runs) else "folds"


def load_members(runs: list[RunDir], need_test: bool = True, test_name: str = "test.npz",
                 test_source: str = "folds") -> Members:
    """Load OOF (and test) logits of ``runs`` and check they can be blended.

    ``test_name`` picks the test predictions in each run folder: ``test.npz`` (written by ``kfold run``)
    or a ``predict-*.npz`` written by ``kfold predict``. ``test_source`` (with ``test.npz``): ``folds`` = the
    mean of the fold models' logits, ``refit`` = the model refit on every row (``kfold run --refit``),
    ``both`` = the mean of the two. Blend weights are always fitted on OOF logits.

    Every member must have the same ids, the same label names in the same order, the same fold map
    hash and the same test ids; the error names the member that differs.
    """
    first: Predictions | None = None
    oofs, tests, names = [], [], []
    for run in runs:
        oof = load_predictions(run.oof_path)
        if oof.y is None or oof.folds is None:
            raise StoreError(f"{oof.path}: field 'y'/'folds': missing, expected an OOF file written by kfold")
        if first is None:
            first = oof
        else:
            if oof.label_names != first.label_names:
                raise StoreError(f"{oof.path}: field 'label_names': member '{run.name}' has labels "
                                 f"{list(oof.label_names)[:3]}..., expected the order of '{names[0]}'")
            if oof.fold_map_hash != first.fold_map_hash:
                skipped = [r.read_config().get("skipped_rows", 0) for r in (runs[0], run)]
                why = (f"; '{names[0]}' was trained with {skipped[0]} and '{run.name}' with {skipped[1]} training rows "
                       "left out by --bad-rows skip, so they hold other data" if skipped[0] != skipped[1] else "")
                raise StoreError(f"{oof.path}: field 'fold_map_hash': member '{run.name}' has fold map "
                                 f"{oof.fold_map_hash[:12]}, expected {first.fold_map_hash[:12]} of '{names[0]}' "
                                 f"(members must share one fold map{why})")
            oof = _aligned(oof, first.ids, "OOF")
            if not np.array_equal(oof.y, first.y) or not np.array_equal(oof.folds, first.folds):
                raise StoreError(f"{oof.path}: field 'y'/'folds': member '{run.name}' disagrees with '{names[0]}'")
        oofs.append(oof.logits)
        names.append(run.name)
        if need_test:
            test = _member_test(run, test_name, test_source)
            if test.label_names != first.label_names:
                raise StoreError(f"{test.path}: field 'label_names': expected the order of the OOF file")
            if tests:
                test = _aligned(test, tests[0].ids, "test")
            tests.append(test)
    assert first is not None
    return Members(names, np.stack(oofs), first.y, first.folds, first.ids, first.label_names, first.fold_map_hash,
                   np.stack([t.logits for t in tests]) if tests else None,
                   tests[0].ids if tests else None, tests[0].y if tests else None)


def _member_test(run: RunDir, test_name: str, source: str) -> Predictions:
    """A member's test logits from ``source`` (see :func:`load_members`)."""
    if source not in TEST_SOURCES:
        raise ConfigError(f"--test-source: unknown source '{source}'; expected one of [{', '.join(TEST_SOURCES)}]")
    if source != "folds" and test_name != "test.npz":
        raise ConfigError(f"--test-source {source}: refits predict the run's own test file; use --test-name test.npz")
    paths = {"folds": [run.root / test_name], "refit": [run.fold_dir(REFIT) / "test.npz"],
             "both": [run.root / test_name, run.fold_dir(REFIT) / "test.npz"]}[source]
    preds = []
    for path in paths:
        if not path.exists():
            hint = ("train it with `kfold run --refit`" if path.parent.name == REFIT
                    else "run it with --test, or `kfold predict` the file")
            raise StoreError(f"{path}: file not found; member '{run.name}' has no such test predictions ({hint})")
        if path.parent.name == REFIT and run.fold_record(REFIT) is None:
            raise StoreError(f"{path}: the refit is not complete (no {path.parent / 'done.json'})")
        preds.append(load_predictions(path))
    if len(preds) == 1:
        return preds[0]
    folds, refit = preds[0], _aligned(preds[1], preds[0].ids, "refit test")
    mean = ((folds.logits.astype(np.float64) + refit.logits) / 2).astype(np.float32)
    return Predictions(folds.ids, folds.label_names, mean, folds.fold_map_hash, folds.y, None, None, folds.path)
