"""How fast this machine trains and predicts this data: a few seconds of the real training loop on a sample."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kfold.core.config import Config
from kfold.core.errors import TrainingError
from kfold.data import LoadedData
from kfold.encoding import encode_cached, entity_types, load_tokenizer, marker_tokens


@dataclass(frozen=True)
class Speed:
    """This machine on this data: training and prediction rows per second, seconds to build a model (what the
    planner of ``kfold auto`` plans with)."""

    train_rows_per_s: float
    predict_rows_per_s: float
    load_seconds: float


#: Training batches and prediction rows the probe times.
PROBE_BATCHES = 8
PROBE_PREDICT_ROWS = 256


def probe_speed(cfg: Config, data: LoadedData, workdir: str | Path, *, model_factory: Callable | None = None,
                seed: int = 0, executor=None) -> Speed:
    """Train ``PROBE_BATCHES`` batches of randomly drawn training rows for one epoch with ``train_fold`` (the
    loop every run uses), then score ``PROBE_PREDICT_ROWS`` other rows; returns the rows per second of both and
    the seconds it took to build the model. Tokenising goes through the run store's cache, so the runs reuse it.

    The same rows go through twice and the second pass is timed: a long run pays its set-up costs once.
    ``executor`` with several slots (a cluster): the probe runs on every slot at once and the speed is one
    slot's while all are busy (the mean over the slots), what a plan over those slots needs.
    """
    # torch is imported here, not at the top: the planner imports Speed from this module and stays torch-free
    from kfold.encoding import length_grouped_batches, sorted_batches

    from ._parts import PartSpec

    datasets = [data.train] + ([data.test] if data.test else [])
    tokenizer = load_tokenizer(cfg.backbone, marker_tokens(cfg.marker, entity_types(datasets)))
    feats = encode_cached(data.train, tokenizer, cfg.marker, cfg.max_len, Path(workdir) / "cache", cfg.too_far)[0]
    y = data.train.y
    order = np.random.default_rng(seed).permutation(len(feats))
    n_train = min(len(order), PROBE_BATCHES * cfg.batch_size)
    tr = order[:n_train]
    va = order[n_train:n_train + PROBE_PREDICT_ROWS] if len(order) > n_train else order[:PROBE_PREDICT_ROWS]
    spec = PartSpec(cfg.replace(data="", test="", labels=""), "probe", 0, tuple(data.train.label_names),
                    tokenizer.pad_token_id, len(tokenizer))
    sample = ProbeSample(feats.take(tr), y[tr], feats.take(va), y[va])
    if executor is not None and executor.slots > 1:
        measured = _on_every_slot(spec, sample, executor)
    else:
        measured = [_measure(spec, sample, model_factory)]
    train_rps, predict_rps, load = (float(np.mean([m[i] for m in measured])) for i in range(3))
    # a few hundred random rows batch with more padding than a whole fold does (its batches are nearly one
    # length each): scale by the padded tokens per row of the probe's batches against the whole data's
    train_rps *= _padding_ratio(feats.lengths, tr, lambda n: length_grouped_batches(n, cfg.batch_size, seed))
    predict_rps *= _padding_ratio(feats.lengths, va, lambda n: sorted_batches(n, cfg.eval_batch_size))
    return Speed(train_rps, predict_rps, load)


@dataclass
class ProbeSample:
    """The rows a probe trains on and predicts."""

    train: object  # Features
    y_train: np.ndarray
    valid: object  # Features
    y_valid: np.ndarray


def _measure(spec, sample: ProbeSample, model_factory: Callable | None = None) -> tuple[float, float, float]:
    """(training rows/s, prediction rows/s, seconds to build the model) of the real loop on the sample, here."""
    from ._train import FoldData, build_model, pick_device, pick_precision, predict, train_fold

    cfg, names = spec.cfg, spec.label_names
    t0 = time.perf_counter()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if model_factory is not None:
        model = model_factory(cfg, len(names), spec.vocab_size)
    else:
        model = build_model(cfg, len(names), spec.vocab_size, device, pick_precision(cfg.precision, device))
    load = time.perf_counter() - t0
    probe_cfg = cfg.replace(epochs=1, average_epochs=0, epoch_scores=True, ema=0.0, refit=False, save_models=False)

    def train() -> float:
        res = train_fold(probe_cfg, names, FoldData(sample.train, sample.y_train, sample.valid, sample.y_valid),
                         pad_id=spec.pad_id, vocab_size=spec.vocab_size, desc="probe", log=lambda m: None,
                         model_factory=lambda: model)
        return res.train_examples_per_s

    # an untimed first pass over the same rows pays the one-off costs (kernel set-up for each sequence length,
    # allocations) that a long run pays once; prediction is timed on its own, outside train_fold's set-up
    train()
    train_rps = train()
    t1 = time.perf_counter()
    predict(model, sample.valid, cfg.eval_batch_size, device, spec.pad_id, pick_precision(cfg.precision, device))
    return train_rps, len(sample.y_valid) / max(time.perf_counter() - t1, 1e-3), load


def probe_part(spec, sample: ProbeSample, device_name: str = "", node: str = ""):
    """The probe as a part: what a cluster's slot measures (run on every slot at once)."""
    from ._parts import PartResult

    train_rps, predict_rps, load = _measure(spec, sample)
    return PartResult(None, None, {"train_rps": train_rps, "predict_rps": predict_rps, "load": load,
                                   "device": device_name, "node": node})


def _on_every_slot(spec, sample: ProbeSample, executor) -> list[tuple[float, float, float]]:
    """The probe on every slot of a cluster at once: each slot's speed while all are busy."""
    probe = executor.with_part_fn(probe_part)
    handle = probe.put(sample)
    for slot in range(probe.slots):
        probe.submit(slot, spec, handle)
    out = []
    while len(out) < probe.slots:
        for event in probe.wait():
            if event.kind != "done":
                raise TrainingError(f"the probe on a cluster slot failed: {event.error or event.message}")
            r = event.result.record
            out.append((r["train_rps"], r["predict_rps"], r["load"]))
    probe.close()
    return out
def _padding_ratio(lengths: np.ndarray, sample: np.ndarray, batching: Callable) -> float:
    """Tokens computed per row (padding included) when ``batching`` batches the sample, over the same when it
    batches every row."""

    def per_row(n: np.ndarray) -> float:
        return sum(len(b) * int(n[b].max()) for b in batching(n)) / max(len(n), 1)

    return per_row(lengths[sample]) / per_row(lengths)
