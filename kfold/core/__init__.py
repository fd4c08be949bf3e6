"""The shared bottom layer: the one exception hierarchy, strict text I/O and atomic writes, the run config (its
schema, presets, one-line help, the variant registry that names the heads), metrics, and the run store (one
prediction schema, completion records, fold locks).

Every other layer and package (``ensemble``, ``tuning``, ``submissions``) builds on these; they import nothing of
the toolkit and no torch. Their module names are public (``kfold.core.store``), and the names below are
re-exported here lazily.
"""

from __future__ import annotations

from .exports import lazy_exports

_EXPORTS = {
    # errors
    "ToolkitError": ".errors",
    "DataError": ".errors",
    "ConfigError": ".errors",
    "StoreError": ".errors",
    "TrainingError": ".errors",
    "RuntimeLost": ".errors",
    "DataProblems": ".errors",
    "Problem": ".errors",
    "ProblemList": ".errors",
    "data_error": ".errors",
    "unknown_name": ".errors",
    "run_command": ".errors",
    "where": ".errors",
    # textio
    "read_text": ".textio",
    "split_lines": ".textio",
    "read_json": ".textio",
    "atomic_path": ".textio",
    "write_atomic": ".textio",
    "write_text_atomic": ".textio",
    "write_json_atomic": ".textio",
    "file_lock": ".textio",
    # config
    "Config": ".config",
    "CHOICES": ".config",
    "MARKERS": ".config",
    "TYPED_MARKERS": ".config",
    "make_config": ".config",
    "load_config_file": ".config",
    "config_from_run": ".config",
    "add_config_flags": ".config",
    "overrides_from_args": ".config",
    "environment": ".config",
    "list_presets": ".config",
    "preset_path": ".config",
    "PRESET_DIR": ".config",
    "TRACKERS": ".config",
    "tracker_names": ".config",
    # variants
    "Variant": ".variants",
    "register": ".variants",
    "get_variant": ".variants",
    "list_variants": ".variants",
    "parse_variants": ".variants",
    "COMBINES": ".variants",
    "ACTIVATIONS": ".variants",
    "POOLS": ".variants",
    # metrics
    "METRICS": ".metrics",
    "LOWER_IS_BETTER": ".metrics",
    "DIRECTION": ".metrics",
    "NO_RELATION_NAMES": ".metrics",
    "default_no_relation": ".metrics",
    "no_relation_index": ".metrics",
    "has_no_relation": ".metrics",
    "auprc_labels": ".metrics",
    "metrics_for": ".metrics",
    "metric_name": ".metrics",
    "score": ".metrics",
    "all_scores": ".metrics",
    "metric_fn": ".metrics",
    "format_scores": ".metrics",
    "softmax": ".metrics",
    "confusion": ".metrics",
    "precision_recall_f1": ".metrics",
    "majority_accuracy": ".metrics",
    "has_directions": ".metrics",
    "better": ".metrics",
    "sign": ".metrics",
    # store
    "Predictions": ".store",
    "load_predictions": ".store",
    "save_predictions": ".store",
    "check_predictions": ".store",
    "RunDir": ".store",
    "list_runs": ".store",
    "REFIT": ".store",
    "file_sha256": ".store",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
