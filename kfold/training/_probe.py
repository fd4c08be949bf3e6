"""How fast this machine trains and predicts this data: a few seconds of the real training loop on a sample, in
this process on every core it may use, or on every slot of a cluster at once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kfold.core.config import Config
from kfold.core.errors import TrainingError
from kfold.data import LoadedData
from kfold.encoding import (Features, encode_cached, entity_types, length_grouped_batches, load_tokenizer,
                            marker_tokens, sorted_batches)

from ._parts import PartResult, PartSpec
from ._resources import Speed, available_cores
from ._device import build_model, pick_device, pick_precision
from ._train import FoldData, predict, train_fold

__all__ = ["Speed", "ProbeSample", "probe_sample", "probe_sample_of_data", "probe_speed", "measure_here", "measure_slots"]

#: Training batches and prediction rows the probe times.
PROBE_BATCHES = 8
PROBE_PREDICT_ROWS = 256


@dataclass
class ProbeSample:
    """The rows a probe trains on and predicts, with what scales its speed to whole-data batches."""

    train: Features
    y_train: np.ndarray
    valid: Features
    y_valid: np.ndarray
    #: padded tokens per row of the probe's batches over those of whole-data batches (training, prediction)
    padding: tuple[float, float] = (1.0, 1.0)


def probe_sample(cfg: Config, feats: Features, y: np.ndarray, label_names, pad_id: int, vocab_size: int,
                 seed: int = 0) -> tuple[PartSpec, ProbeSample]:
    """``PROBE_BATCHES`` batches of randomly drawn training rows and ``PROBE_PREDICT_ROWS`` other rows of
    ``feats``, with the spec a probe trains them with."""
    order = np.random.default_rng(seed).permutation(len(feats))
    n_train = min(len(order), PROBE_BATCHES * cfg.batch_size)
    tr = order[:n_train]
    va = order[n_train:n_train + PROBE_PREDICT_ROWS] if len(order) > n_train else order[:PROBE_PREDICT_ROWS]
    spec = PartSpec(cfg.replace(data="", test="", labels=""), "probe", 0, tuple(label_names), pad_id, vocab_size)
    # a few hundred random rows batch with more padding than a whole fold does (its batches are nearly one
    # length each): the speeds are scaled by the padded tokens per row of the probe's batches against the data's
    padding = (_padding_ratio(feats.lengths, tr, lambda n: length_grouped_batches(n, cfg.batch_size, seed)),
               _padding_ratio(feats.lengths, va, lambda n: sorted_batches(n, cfg.eval_batch_size)))
    return spec, ProbeSample(feats.take(tr), y[tr], feats.take(va), y[va], padding)


def probe_sample_of_data(cfg: Config, data: LoadedData, workdir: str | Path, seed: int = 0
                         ) -> tuple[PartSpec, ProbeSample]:
    """:func:`probe_sample` of a loaded data set, tokenised through the run store's cache (the runs reuse it)."""
    datasets = [data.train] + ([data.test] if data.test else [])
    tokenizer = load_tokenizer(cfg.backbone, marker_tokens(cfg.marker, entity_types(datasets)))
    feats = encode_cached(data.train, tokenizer, cfg.marker, cfg.max_len, Path(workdir) / "cache", cfg.too_far)[0]
    return probe_sample(cfg, feats, data.train.y, data.train.label_names, tokenizer.pad_token_id, len(tokenizer), seed)


def probe_speed(cfg: Config, data: LoadedData, workdir: str | Path, *, model_factory: Callable | None = None,
                seed: int = 0, executor=None) -> Speed:
    """Train ``PROBE_BATCHES`` batches of randomly drawn training rows for one epoch with ``train_fold`` (the
    loop every run uses), then score ``PROBE_PREDICT_ROWS`` other rows; returns the rows per second of both and
    the seconds it took to build the model. Tokenising goes through the run store's cache, so the runs reuse it.

    The same rows go through twice and the second pass is timed: a long run pays its set-up costs once.
    ``executor`` with several slots (a cluster): the probe runs on every slot at once and the speed is one
    slot's while all are busy (the mean over the slots), what a plan over those slots needs; else it runs here on
    every core this process may use (``--threads`` when set).
    """
    spec, sample = probe_sample_of_data(cfg, data, workdir, seed)
    if executor is not None and executor.slots > 1:
        return measure_slots(spec, sample, executor)
    return measure_here(spec, sample, model_factory)


def measure_here(spec: PartSpec, sample: ProbeSample, model_factory: Callable | None = None) -> Speed:
    """The probe in this process, on ``spec.cfg.threads`` threads or every core this process may use."""
    threads = spec.cfg.threads or available_cores()
    train_rps, predict_rps, load = _measure(spec.cfg.replace(threads=threads), spec, sample, model_factory)
    return Speed(train_rps * sample.padding[0], predict_rps * sample.padding[1], load)


def measure_slots(spec: PartSpec, sample: ProbeSample, executor) -> Speed:
    """The probe on every slot of ``executor`` at once: one slot's speed while all are busy (the mean over them).
    The probe's executor is closed on every path."""
    probe = executor.with_part_fn(probe_part)
    try:
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
    finally:
        probe.close()
    train_rps, predict_rps, load = (float(np.mean([m[i] for m in out])) for i in range(3))
    return Speed(train_rps * sample.padding[0], predict_rps * sample.padding[1], load)


def _measure(cfg: Config, spec: PartSpec, sample: ProbeSample, model_factory: Callable | None = None
             ) -> tuple[float, float, float]:
    """(training rows/s, prediction rows/s, seconds to build the model) of the real loop on the sample, here."""
    names = spec.label_names
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
    # plain steps: R-Drop's and adversarial training's extra passes are counted by the cost model (Config.step_cost)
    # on top of the measured rate, so measuring them here too would count them twice
    probe_cfg = cfg.replace(epochs=1, average_epochs=0, epoch_scores=True, ema=0.0, refit=False, save_models=False,
                            rdrop=0.0, adversarial="none")

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


def probe_part(spec: PartSpec, sample: ProbeSample, device_name: str = "", node: str = "") -> PartResult:
    """The probe as a part: what a cluster's slot measures (run on every slot at once)."""
    train_rps, predict_rps, load = _measure(spec.cfg, spec, sample)
    return PartResult(None, None, {"train_rps": train_rps, "predict_rps": predict_rps, "load": load,
                                   "device": device_name, "node": node})


def _padding_ratio(lengths: np.ndarray, sample: np.ndarray, batching: Callable) -> float:
    """Tokens computed per row (padding included) when ``batching`` batches the sample, over the same when it
    batches every row (the factor that scales the sample's rows per second to the data's)."""

    def per_row(n: np.ndarray) -> float:
        return sum(len(b) * int(n[b].max()) for b in batching(n)) / max(len(n), 1)

    return per_row(lengths[sample]) / per_row(lengths)
