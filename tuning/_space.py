"""Search spaces: the default (learning rate and label smoothing) and space files that add more keys."""

from __future__ import annotations

import json
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from kfold.core.config import CHOICES, Config
from kfold.core.errors import ConfigError, unknown_name

#: Default space: learning rate on a log scale and label smoothing.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-5, "high": 3e-4, "log": True},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
}
#: Keys that may never be tuned: the seed (tuning it is overfitting to noise), data and folds.
FORBIDDEN = ("seed", "fold_seed", "folds", "group", "data", "test", "labels", "format", "columns", "metric",
             "device", "threads", "save_models", "offsets", "repair_window", "too_far", "overlap", "bad_rows",
             "no_relation", "cluster", "gpus_per_fold", "cpus_per_fold", "max_parallel", "retries", "pseudo_from",
             "pseudo_folds")
_KINDS = ("float", "int", "categorical")


def load_space(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The default space, updated with the entries of a JSON/TOML space file.

    A file entry is ``key: {"type": "float", "low": .., "high": .., "log": true}``,
    ``{"type": "int", "low": .., "high": .., "step": 1}`` or ``{"type": "categorical", "choices": [...]}``;
    ``key: null`` removes a default entry. Keys are Config keys; ``seed`` and the data/fold keys are refused.

    Example
    -------
    >>> sorted(load_space(None))
    ['label_smoothing', 'lr']
    """
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    if path is None:
        return space
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the space file: {exc.strerror}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: invalid space file: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: found a {type(raw).__name__}, expected a table of key -> distribution")
    for key, spec in raw.items():
        if spec is None:
            space.pop(key, None)
            continue
        space[key] = _check_entry(path, key, spec)
    if not space:
        raise ConfigError(f"{path}: the search space is empty")
    return space


def _check_entry(path: Path, key: str, spec: Any) -> dict[str, Any]:
    valid = {f.name: f for f in fields(Config)}
    if key in FORBIDDEN:
        raise ConfigError(f"{path}: key '{key}': it cannot be tuned (the seed, the data/fold settings, the "
                          "pseudo-label teachers and their per-fold use are fixed)")
    if key not in valid:
        raise unknown_name(f"search-space key (in {path})", key, [k for k in valid if k not in FORBIDDEN])
    if not isinstance(spec, dict) or spec.get("type") not in _KINDS:
        raise ConfigError(f"{path}: key '{key}': found {spec!r}, expected {{type: float|int|categorical, ...}}")
    kind = type(valid[key].default)
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{path}: key '{key}': expected a non-empty 'choices' list")
        for c in choices:
            ok = isinstance(c, kind) and not (kind is not bool and isinstance(c, bool))
            if kind is float and isinstance(c, int) and not isinstance(c, bool):
                ok = True
            if not ok or (key in CHOICES and c not in CHOICES[key]):
                raise ConfigError(f"{path}: key '{key}': choice {c!r} is not a valid {key}")
        return {"type": "categorical", "choices": choices}
    if kind is not (float if spec["type"] == "float" else int) and not (kind is float and spec["type"] == "int"):
        raise ConfigError(f"{path}: key '{key}': a {spec['type']} range for a {kind.__name__} setting")
    low, high = spec.get("low"), spec.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
        raise ConfigError(f"{path}: key '{key}': found low={low!r} high={high!r}, expected numbers with low < high")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"{path}: key '{key}': a log range needs low > 0")
    out = {"type": spec["type"], "low": low, "high": high, "log": bool(spec.get("log", False))}
    if spec["type"] == "int":
        out["step"] = int(spec.get("step", 1))
    return out


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample every key of the space with an Optuna trial; returns Config overrides."""
    params = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            params[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=spec.get("step", 1),
                                           log=spec.get("log", False))
        else:
            params[key] = trial.suggest_categorical(key, spec["choices"])
    # an int range over a float setting (e.g. warmup steps as a ratio) still yields a float
    return {k: float(v) if type(Config.__dataclass_fields__[k].default) is float else v for k, v in params.items()}
