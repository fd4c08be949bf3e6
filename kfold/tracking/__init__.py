"""Trackers teams already share (MLflow, TensorBoard, Weights & Biases), fed by the driver: ``--report-to``.

One tracker run per toolkit run, grouped by workdir, with the resolved config as parameters, per-epoch training
loss and validation scores per fold, the OOF scores and ``summary.json``; the calls are made on a background
thread, so a slow or failing tracker warns once and never stops or slows training (``_hub``). What is sent is
read from what the driver writes to the store (``_content``), so ``kfold report --to`` sends the same keys
afterwards. One class per tracker, each the library's own API, imported only when used (``_backends``).

Imports ``kfold.core`` only (and, when used, the tracker's package; TensorBoard through ``torch.utils``).
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    "Trackers": "._hub",
    "open_trackers": "._hub",
    "trackers_for": "._hub",
    "check_trackers": "._hub",
    "TRACKER_FILE": "._hub",
    "part_metrics": "._content",
    "oof_metrics": "._content",
    "log_part": "._content",
    "log_epoch": "._content",
    "epoch_metrics": "._content",
    "log_assembled": "._content",
    "run_tags": "._content",
    "upload_workdir": "._content",
    "MLflowTracker": "._backends",
    "TensorBoardTracker": "._backends",
    "WandbTracker": "._backends",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
