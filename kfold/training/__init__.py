"""Folds and runs: the one training loop (a fold, or the refit on every row), devices and precision, fold maps
made once and shared, parts computed from values, the executors that compute them (in this process, or on Ray),
the scheduler that writes their results to the run store, the runner, prediction of new test files with saved
fold models, the probe that measures this machine's speed, and masked-LM pretraining of a backbone on the task's
sentences (``kfold pretrain``).

Imports the layers below (core, data, encoding, model); ``tuning``, ``kfold.auto`` and the CLI call it. Inside,
modules are layered too (checked by an import-linter contract in pyproject.toml), top to bottom: ``_runner`` |
``_predict``; ``_choose`` (which executor); ``_schedule`` | ``_probe``; ``_inprocess`` | ``_ray``; ``_parts``;
``_train`` | ``_folds`` | ``_pretrain`` | ``_pseudo`` (which test rows a fold takes as pseudo-labelled);
``_adversarial`` (FGM, AWP) | ``_device`` (devices, precision, seeds,
the model a config builds); ``_resources`` (events, the executor interface, resource rules, torch- and Ray-free).
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _train
    "train_fold": "._train",
    "FoldData": "._train",
    "FoldResult": "._train",
    "predict": "._train",
    "predict_views": "._train",
    # _device
    "build_model": "._device",
    "pick_device": "._device",
    "pick_precision": "._device",
    "pick_attention": "._device",
    "precision_note": "._device",
    "compute_line": "._device",
    "cpu_has_native_bf16": "._device",
    "seed_everything": "._device",
    "fold_seed": "._device",
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
    "InProcessExecutor": "._inprocess",
    "make_executor": "._choose",
    "choose_executor": "._choose",
    "job_executor": "._runner",
    "Placement": "._choose",
    "Work": "._choose",
    "work_of": "._choose",
    "shared_executors": "._choose",
    "resolve_cluster": "._choose",
    "slots_of": "._resources",
    "available_cores": "._resources",
    "Event": "._resources",
    "Failure": "._schedule",
    "fold_data": "._parts",
    "Swapped": "._parts",
    "swapped_features": "._runner",
    "data_record": "._runner",
    "RUNTIME_KEYS": "._runner",
    "PLACEMENT_KEYS": "._runner",
    "NAMING_KEYS": "._runner",
    # _predict
    "predict_run": "._predict",
    # _pretrain
    "pretrain": "._pretrain",
    "PretrainSettings": "._pretrain",
    "PretrainSpec": "._pretrain",
    "PretrainPayload": "._pretrain",
    "pretrain_epoch": "._pretrain",
    "pretrain_part": "._parts",
    "run_pretrain": "._choose",
    # _pseudo
    "pseudo_rows": "._pseudo",
    "pseudo_labels": "._pseudo",
    "PseudoLabels": "._pseudo",
    # _probe
    "Speed": "._resources",
    "probe_speed": "._probe",
    "probe_sample": "._probe",
    "probe_sample_of_data": "._probe",
    "measure_here": "._probe",
    "measure_slots": "._probe",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
