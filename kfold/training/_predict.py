"""Predicting a new test file with the fold models of a run saved with ``--save-models``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from kfold.core.config import config_from_run
from kfold.core.errors import StoreError
from kfold.core.store import Predictions, RunDir, save_predictions
from kfold.data import data_notes, inverse_labels, read_dataset, read_settings, swap_entities, write_lists
from kfold.encoding import crop_note, encode


def predict_run(run_dir: str | Path, test_file: str | Path, out: str | Path | None = None,
                log: Callable[[str], None] = print) -> Path:
    """Average the fold models' logits on ``test_file``; write a Predictions file (with per-fold logits).

    Parameters
    ----------
    run_dir: a run folder whose folds have ``model/`` (``kfold run --save-models``).
    test_file: read with the run's label names, format and columns (labels optional).
    out: default ``RUN/predict-<test file stem>.npz``; ``ensemble blend --test-name`` can blend these.

    Raises
    ------
    StoreError when a fold has no saved model; DataError for a bad test file.

    Example
    -------
    >>> predict_run("runs/runs/split-minilm-s1", "test_round2.tsv")  # doctest: +SKIP
    """
    import torch

    from kfold.encoding import load_tokenizer_dir

    from ._device import build_model, pick_device, pick_precision
    from ._train import predict_views

    run = RunDir(run_dir)
    raw = run.read_config()
    cfg = config_from_run(raw)
    names = tuple(raw["label_names"])
    folders = [run.fold_dir(f) / "model" for f in range(cfg.folds)]
    missing = [str(f) for f in folders if not (f / "model.pt").exists()]
    if missing:
        raise StoreError(f"{missing[0]}: no saved model; train the run with --save-models to predict new files")
    test = read_dataset(test_file, names, role="test", **read_settings(cfg))
    for note in data_notes(test, write_lists(test, run.root.parent.parent)):
        log(note)
    tok = load_tokenizer_dir(folders[0])
    feats = encode(test, tok, cfg.marker, cfg.max_len, cfg.too_far)[0]
    swapped = perm = None
    if cfg.tta == "swap":  # predicted as the run's folds were: both readings, averaged
        perm = inverse_labels(names, f"{run.root} (--tta swap)")
        swapped = encode(swap_entities(test, perm), tok, cfg.marker, cfg.max_len, cfg.too_far)[0]
    note = crop_note(feats, cfg.max_len)
    if note:
        log(note)
    device = pick_device(cfg.device)
    dtype = pick_precision(cfg.precision, device)
    per_fold = []
    for fold, folder in enumerate(folders):
        model = build_model(cfg, len(names), len(tok), device, dtype)
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        model.to(device)
        per_fold.append(predict_views(model, feats, swapped, perm, cfg.eval_batch_size, device, tok.pad_token_id, dtype))
        log(f"{run.name} fold {fold}: predicted {len(test)} rows")
    stack = np.stack(per_fold)
    out = Path(out) if out else run.root / f"predict-{Path(test_file).stem}.npz"
    save_predictions(out, Predictions(test.ids, names, stack.mean(0), raw["fold_map_hash"], test.y, None, stack))
    return out
