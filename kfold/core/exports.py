"""Lazy re-exports (PEP 562) for the packages' ``__init__`` modules: a public name is imported from its private
module on first use, so ``import kfold`` (and the torch-free ``ensemble`` and ``submissions``) load nothing
heavy until a name is needed."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps each public name to the
    module (relative to ``package``, e.g. ``"._readers"``) that defines it.

    Example
    -------
    >>> __getattr__, __dir__ = lazy_exports(__name__, {"read_dataset": "._readers"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
