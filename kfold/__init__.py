"""kfold: data readers, entity markers, R-BERT variant models, the training loop, the fold runner and the
run store.

Public names are re-exported lazily, so ``import kfold`` (and the torch-free ``ensemble`` and
``submissions`` packages, which use the store and metrics) do not import torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # errors
    "ToolkitError": "_errors", "DataError": "_errors", "ConfigError": "_errors", "StoreError": "_errors",
    "TrainingError": "_errors",
    # data
    "Span": "_schema", "Example": "_schema", "Dataset": "_schema", "read_dataset": "_readers",
    "read_label_file": "_labels", "write_demo_data": "_demo", "load_data": "_data",
    # markers and tokenisation
    "MARKERS": "_markers", "mark": "_markers", "encode": "_encode", "Features": "_encode",
    # variants, models, losses
    "Variant": "_variants", "register": "_variants", "get_variant": "_variants", "list_variants": "_variants",
    "RelationModel": "_models", "load_backbone": "_models", "load_tokenizer": "_models", "RelationLoss": "_losses",
    # config, metrics
    "Config": "_config", "make_config": "_config", "METRICS": "_metrics", "score": "_metrics", "all_scores": "_metrics",
    # training, folds, store, runner, report
    "train_fold": "_train", "FoldData": "_train", "FoldResult": "_train", "length_grouped_batches": "_batching",
    "find_micro_batch": "_batching", "FoldMap": "_folds", "make_fold_map": "_folds", "load_fold_map": "_folds",
    "Predictions": "_store", "load_predictions": "_store", "save_predictions": "_store", "RunDir": "_store",
    "list_runs": "_store", "run_kfold": "_runner", "run_name": "_runner", "build_report": "_report",
    "predict_run": "_predict",
    # notebooks (pandas)
    "load_report": "_notebook", "load_oof": "_notebook", "suspect_labels": "_notebook",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kfold' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
