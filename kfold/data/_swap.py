"""Entity swap: the same sentence read with subject and object exchanged. Torch-free.

For labels that carry a direction (SemEval's ``Cause-Effect(e1,e2)`` / ``Cause-Effect(e2,e1)``) the
swapped example has the inverse label, so every labelled row gives a second, equally valid row
(``--augment swap``) and every prediction can be made twice and averaged (``--tta swap``).
Labels without a direction (``Other``) are their own inverse.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from kfold.core.errors import ConfigError
from kfold.core.metrics import DIRECTION

from ._schema import Dataset

_FLIP = {"(e1,e2)": "(e2,e1)", "(e2,e1)": "(e1,e2)"}


def inverse_labels(label_names: Sequence[str], where: str = "entity swap") -> np.ndarray:
    """``perm[i]`` = the index of label ``i`` read with the entities swapped (an involution).

    ``where`` starts the error message (the data file). Raises ConfigError when no label has a
    direction or a directed label's inverse is missing.

    >>> inverse_labels(["Other", "Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)"]).tolist()
    [0, 2, 1]
    """
    index = {name: i for i, name in enumerate(label_names)}
    perm = np.arange(len(label_names))
    directed = 0
    for i, name in enumerate(label_names):
        m = DIRECTION.search(name)
        if not m:
            continue
        directed += 1
        inverse = name[: m.start()] + _FLIP[m.group(0)]
        if inverse not in index:
            raise ConfigError(f"{where}: label '{name}' has no inverse '{inverse}' among the labels, "
                              "so entity swap cannot relabel its rows")
        perm[i] = index[inverse]
    if not directed:
        raise ConfigError(f"{where}: entity swap needs labels with a direction, like 'Cause-Effect(e1,e2)' / "
                          "'Cause-Effect(e2,e1)'; these labels have none, so a swapped example's label is unknown")
    return perm


def swap_entities(ds: Dataset, perm: np.ndarray | None = None) -> Dataset:
    """The same rows with subject and object (spans and types) exchanged and labels inverted; ids kept.
    ``perm``: the labels' :func:`inverse_labels` when the caller has it already."""
    perm = inverse_labels(ds.label_names) if perm is None else perm
    names = ds.label_names
    index = {name: i for i, name in enumerate(names)}
    examples = [dataclasses.replace(ex, subj=ex.obj, obj=ex.subj,
                                    label=None if ex.label is None else names[perm[index[ex.label]]])
                for ex in ds.examples]
    return Dataset(ds.path, examples, names, ds.repairs)


def unswap_logits(logits: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Logits predicted on swapped rows, columns put back in the original reading's label order."""
    return logits[:, perm]
