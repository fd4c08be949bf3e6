"""How fast this machine trains and predicts this data: a few seconds of the real training loop on a sample."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from ._config import Config
from ._data import LoadedData
from ._encode import encode_cached
from ._markers import entity_types, marker_tokens
from ._models import load_tokenizer
from ._plan import Speed
from ._train import FoldData, build_model, pick_device, pick_precision, train_fold

#: Training batches and prediction rows the probe times.
PROBE_BATCHES = 8
PROBE_PREDICT_ROWS = 256


def probe_speed(cfg: Config, data: LoadedData, workdir: str | Path, *, model_factory: Callable | None = None,
                seed: int = 0) -> Speed:
    """Train ``PROBE_BATCHES`` batches of randomly drawn training rows for one epoch with ``train_fold`` (the
    loop every run uses), then score ``PROBE_PREDICT_ROWS`` other rows; returns the rows per second of both and
    the seconds it took to build the model. Tokenising goes through the run store's cache, so the runs reuse it.

    The same rows go through twice and the second pass is timed: a long run pays its set-up costs once.
    """
    datasets = [data.train] + ([data.test] if data.test else [])
    tokenizer = load_tokenizer(cfg.backbone, marker_tokens(cfg.marker, entity_types(datasets)))
    feats = encode_cached(data.train, tokenizer, cfg.marker, cfg.max_len, Path(workdir) / "cache", cfg.too_far)[0]
    y = data.train.y
    order = np.random.default_rng(seed).permutation(len(feats))
    n_train = min(len(order), PROBE_BATCHES * cfg.batch_size)
    tr = order[:n_train]
    va = order[n_train:n_train + PROBE_PREDICT_ROWS] if len(order) > n_train else order[:PROBE_PREDICT_ROWS]
    names = data.train.label_names
    t0 = time.perf_counter()
    if model_factory is not None:
        model = model_factory(cfg, len(names), len(tokenizer))
    else:
        device = pick_device(cfg.device)
        model = build_model(cfg, len(names), len(tokenizer), device, pick_precision(cfg.precision, device))
    load = time.perf_counter() - t0
    probe_cfg = cfg.replace(epochs=1, average_epochs=0, epoch_scores=True, ema=0.0, refit=False, save_models=False)

    def timed(rows: np.ndarray, scored: np.ndarray) -> tuple[float, float]:
        t1 = time.perf_counter()
        res = train_fold(probe_cfg, names, FoldData(feats.take(rows), y[rows], feats.take(scored), y[scored]),
                         pad_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), desc="probe", log=lambda m: None,
                         model_factory=lambda: model)
        return res.train_examples_per_s, len(scored) / max(time.perf_counter() - t1 - res.train_seconds, 1e-3)

    # an untimed first pass over the same rows pays the one-off costs (kernel set-up for each sequence length,
    # allocations) that a long run pays once: without it the probe measured 0.69x the speed of a SemEval run
    timed(tr, va)
    train_rps, predict_rps = timed(tr, va)
    return Speed(train_rps, predict_rps, load)
