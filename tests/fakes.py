"""Run stores built directly from arrays (no training), for ensemble, report and corruption tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kfold.core.store import Predictions, RunDir, save_predictions
from kfold.core.textio import write_json_atomic


def fake_run(workdir: Path, name: str, oof_logits: np.ndarray, y: np.ndarray, folds: np.ndarray,
             label_names, test_logits: np.ndarray | None = None, fold_map_hash: str = "f" * 64,
             ids=None, test_ids=None, config: dict | None = None) -> RunDir:
    """Write config.json, oof.npz and (optionally) test.npz of a run as ``kfold run`` would."""
    run = RunDir(Path(workdir) / "runs" / name)
    n = len(y)
    ids = np.array([f"id{i}" for i in range(n)]) if ids is None else np.asarray(ids)
    write_json_atomic(run.config_path, {"run": name, "config": config or {"variant": name}, "label_names": list(label_names),
                                        "fold_map_hash": fold_map_hash})
    save_predictions(run.oof_path, Predictions(ids, tuple(label_names), np.asarray(oof_logits, np.float32), fold_map_hash,
                                               np.asarray(y), np.asarray(folds)))
    if test_logits is not None:
        m = len(test_logits)
        test_ids = np.array([f"t{i}" for i in range(m)]) if test_ids is None else np.asarray(test_ids)
        save_predictions(run.test_path, Predictions(test_ids, tuple(label_names), np.asarray(test_logits, np.float32),
                                                    fold_map_hash))
    return run


def noisy_member(y: np.ndarray, num_labels: int, skill: float, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Logits that put ``skill`` extra mass on the gold label over Gaussian noise."""
    n = len(y) if n is None else n
    z = rng.normal(size=(n, num_labels))
    if skill:
        z[np.arange(n), y[:n]] += skill
    return z.astype(np.float32)
