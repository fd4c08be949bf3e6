"""kfold: stratified k-fold training of relation-extraction variants with out-of-fold logits for every run.

The package is a pipeline in layers, each a subpackage that imports only the ones below it (the import-linter
contract in ``pyproject.toml`` checks it; README, "How the code is laid out")::

    kfold.cli                      the ``kfold`` command
    kfold.auto | kfold.report      ``kfold auto`` (planner + loop); the results table, HTML page, notebook API
    ensemble | tuning              blends and leaderboard files; Optuna studies (packages of their own)
    kfold.training                 the fold loop, fold maps, the runner, prediction, the probe
    kfold.model                    backbones, relation heads, losses, optimiser groups
    kfold.encoding                 markers, tokenizer, token features and windows, batches, check-data
    submissions                    leaderboard file formats and their checker
    kfold.data                     example schema, readers, validation and repair, labels, demo data, swap
    kfold.core                     errors, text I/O, run config, variant registry, metrics, run store

Public names are re-exported lazily, so ``import kfold`` (and the torch-free ``ensemble`` and ``submissions``
packages, which use the store and metrics) do not import torch until a model is needed.
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # errors
    "ToolkitError": "kfold.core.errors", "DataError": "kfold.core.errors", "ConfigError": "kfold.core.errors",
    "StoreError": "kfold.core.errors", "TrainingError": "kfold.core.errors",
    # data
    "Span": "kfold.data", "Example": "kfold.data", "Dataset": "kfold.data", "read_dataset": "kfold.data",
    "read_label_file": "kfold.data", "write_demo_data": "kfold.data", "load_data": "kfold.data",
    # markers and tokenisation
    "MARKERS": "kfold.core.config", "mark": "kfold.encoding", "encode": "kfold.encoding", "Features": "kfold.encoding",
    "load_tokenizer": "kfold.encoding",
    # variants, models, losses
    "Variant": "kfold.core.variants", "register": "kfold.core.variants", "get_variant": "kfold.core.variants",
    "list_variants": "kfold.core.variants", "RelationModel": "kfold.model", "load_backbone": "kfold.model",
    "RelationLoss": "kfold.model",
    # config, metrics
    "Config": "kfold.core.config", "make_config": "kfold.core.config", "METRICS": "kfold.core.metrics",
    "score": "kfold.core.metrics", "all_scores": "kfold.core.metrics",
    # training, folds, store, runner, report
    "train_fold": "kfold.training", "FoldData": "kfold.training", "FoldResult": "kfold.training",
    "length_grouped_batches": "kfold.encoding", "find_micro_batch": "kfold.encoding", "FoldMap": "kfold.training",
    "make_fold_map": "kfold.training", "load_fold_map": "kfold.training", "Predictions": "kfold.core.store",
    "load_predictions": "kfold.core.store", "save_predictions": "kfold.core.store", "RunDir": "kfold.core.store",
    "list_runs": "kfold.core.store", "run_kfold": "kfold.training", "run_name": "kfold.training",
    "build_report": "kfold.report", "predict_run": "kfold.training",
    # notebooks (pandas)
    "load_report": "kfold.report", "load_oof": "kfold.report", "suspect_labels": "kfold.report",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
