"""Folds and runs: the one training loop (a fold, or the refit on every row), devices and precision, fold maps
made once and shared, the runner that trains a run's missing parts and writes them to the run store, prediction
of new test files with saved fold models, and the probe that measures this machine's speed.

Imports the layers below (core, data, encoding, model); ``tuning``, ``kfold.auto`` and the CLI call it.
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _train
    "train_fold": "._train",
    "FoldData": "._train",
    "FoldResult": "._train",
    "build_model": "._train",
    "predict": "._train",
    "predict_views": "._train",
    "pick_device": "._train",
    "pick_precision": "._train",
    "pick_attention": "._train",
    "precision_note": "._train",
    "compute_line": "._train",
    "cpu_has_native_bf16": "._train",
    "seed_everything": "._train",
    "fold_seed": "._train",
    # _folds
    "FoldMap": "._folds",
    "make_fold_map": "._folds",
    "save_fold_map": "._folds",
    "load_fold_map": "._folds",
    "fold_map_for": "._folds",
    "fold_map_path": "._folds",
    # _runner
    "run_kfold": "._runner",
    "run_name": "._runner",
    "RunOutcome": "._schedule",
    "prepare": "._runner",
    "assemble": "._schedule",
    "run_many": "._runner",
    "prepare_job": "._runner",
    "run_jobs": "._schedule",
    "Job": "._schedule",
    "save_model": "._schedule",
    "PartSpec": "._parts",
    "PartResult": "._parts",
    "RunPayload": "._parts",
    "compute_part": "._parts",
    "InProcessExecutor": "._executors",
    "make_executor": "._executors",
    "shared_executors": "._executors",
    "resolve_cluster": "._executors",
    "slots_of": "._executors",
    "fold_data": "._runner",
    "swapped_features": "._runner",
    "data_record": "._runner",
    "RUNTIME_KEYS": "._runner",
    "NAMING_KEYS": "._runner",
    # _predict
    "predict_run": "._predict",
    # _probe
    "Speed": "._probe",
    "probe_speed": "._probe",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
