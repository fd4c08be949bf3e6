"""Batches: length-grouped shuffled batches for training, length-sorted batches for inference,
dynamic padding, and the largest-micro-batch finder."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from kfold.core.errors import TrainingError

from ._encode import Features


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, group_factor: int = 50) -> list[np.ndarray]:
    """Training batches of similar length, in random order (every index exactly once).

    Indices are shuffled with ``seed``, cut into mega-batches of ``batch_size * group_factor``,
    each mega-batch is sorted by length and cut into batches, and the batches are shuffled.
    Padding then stays small while the order stays random from epoch to epoch (pass a new seed).

    Example
    -------
    >>> b = length_grouped_batches(np.array([5, 9, 3, 7]), 2, seed=0)
    >>> sorted(np.concatenate(b).tolist())
    [0, 1, 2, 3]
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    mega = max(batch_size * group_factor, batch_size)
    batches = []
    for lo in range(0, len(order), mega):
        chunk = order[lo : lo + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def shuffled_batches(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Plain shuffled batches (``length_grouping = false``)."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches sorted by length (longest first, so memory peaks at once)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(feats: Features, idx: np.ndarray, pad_id: int, y: np.ndarray | None = None,
            weights: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Pad the rows ``idx`` to their longest length (dynamic padding). ``y``: label indices [N] (int64), or soft
    targets [N, C] (float32); ``weights``: each row's loss weight (pseudo-labelled rows)."""
    rows = [feats.row(i) for i in idx]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "ent": torch.from_numpy(feats.ent[idx].astype(np.int64))}
    if y is not None:
        batch["labels"] = torch.from_numpy(y[idx].astype(np.float32 if y.ndim == 2 else np.int64))
    if weights is not None:
        batch["weights"] = torch.from_numpy(weights[idx].astype(np.float32))
    return batch


def padding_share(feats: Features, batches: Sequence[np.ndarray]) -> float:
    """Padded tokens / all tokens fed to the model for these batches."""
    lengths = feats.lengths
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1.0 - real / total if total else 0.0


def split_micro(batch_idx: np.ndarray, micro: int) -> list[np.ndarray]:
    """Cut one optimizer-step batch into micro-batches of at most ``micro`` rows."""
    return [batch_idx[i : i + micro] for i in range(0, len(batch_idx), micro)]


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error from CUDA, MPS or the CPU allocator."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def find_micro_batch(batch_size: int, try_step: Callable[[int], None], on_oom: Callable[[], None] = lambda: None) -> int:
    """The largest micro-batch (batch_size, then halving) for which ``try_step(micro)`` does not run out of memory.

    ``try_step`` should run a forward and backward pass on the longest rows. Raises TrainingError
    when even a micro-batch of 1 does not fit.

    Example
    -------
    >>> def step(m):
    ...     if m > 4:
    ...         raise RuntimeError("CUDA out of memory")
    >>> find_micro_batch(16, step)
    4
    """
    micro = batch_size
    while True:
        try:
            try_step(micro)
            return micro
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not is_oom(exc):
                raise
            on_oom()
            if micro == 1:
                raise TrainingError("out of memory with a micro-batch of 1; lower --max-len, enable "
                                    "--grad-checkpointing or use a smaller backbone") from None
            micro = max(1, micro // 2)


def accumulation_steps(batch_size: int, micro: int) -> int:
    """Micro-batches per optimizer step."""
    return math.ceil(batch_size / micro)
