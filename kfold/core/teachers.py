"""Pseudo-label teachers' probabilities of the test rows, as the student's run set-up takes them. Torch-free.

``ensemble.load_teachers`` reads them from runs and blend files (it knows the blenders); ``kfold.training`` takes
them in this form (it may not import ``ensemble``, a layer above it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError


@dataclass
class Teachers:
    """The teachers' test probabilities: ``fold_probs[k]`` for fold k's student (from models that never saw fold k's
    validation rows), ``full_probs`` for its refit and for ``--pseudo-folds naive``; rows in ``test_ids`` order."""

    sources: list[str]
    test_ids: np.ndarray
    label_names: tuple[str, ...]
    fold_map_hash: str
    fold_probs: dict[int, np.ndarray] = field(default_factory=dict)
    full_probs: np.ndarray | None = None
    test_hash: str = ""  # the content hash of the test file they predicted ("" when their runs did not record it)

    @property
    def digest(self) -> str:
        """SHA-256 of the probabilities used (every fold's and the refit's, float32), the ids and label names:
        other teachers, or the same teachers retrained, are another student."""
        h = hashlib.sha256("\n".join(map(str, self.test_ids)).encode() + "\n".join(self.label_names).encode())
        for k in sorted(self.fold_probs):
            h.update(np.ascontiguousarray(self.fold_probs[k], dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.full_probs, dtype=np.float32).tobytes())
        return h.hexdigest()


def positions(ids, wanted, what: str) -> np.ndarray:
    """Where each of ``wanted`` is in ``ids`` (rows are joined on ids, never on order); ConfigError naming ``what``
    when the two are not the same set of ids.

    >>> positions(np.array(["b", "a"]), np.array(["a", "b"]), "x").tolist()
    [1, 0]
    """
    at = {str(i): k for k, i in enumerate(ids)}
    missing = [str(i) for i in wanted if str(i) not in at]
    if missing or len(ids) != len(wanted):
        raise ConfigError(f"{what}: another test file (other test ids, e.g. {missing[:3] or [str(i) for i in ids[:3]]})")
    return np.array([at[str(i)] for i in wanted], dtype=np.int64)
