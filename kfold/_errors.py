"""The project's one exception hierarchy (torch-free: ensemble and submissions use it too).

Every message names where the problem is (file, row, field), what was found and what was
expected, so the command-line tools can print it as one line and exit with status 2.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable


class ToolkitError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class DataError(ToolkitError):
    """A data, label or submission file is malformed."""


class ConfigError(ToolkitError):
    """A configuration file, flag or name (variant, metric, ...) is wrong."""


class StoreError(ToolkitError):
    """A run-store file (fold map, logits, completion record) is missing, corrupt or foreign."""


class TrainingError(ToolkitError):
    """Training cannot go on (NaN loss, out of memory at micro-batch 1, ...)."""


def where(path: Any = None, row: int | None = None, field: str | None = None) -> str:
    """Format a location as ``file: row N, field 'x'`` (parts that are None are left out)."""
    parts = []
    if path is not None:
        parts.append(str(path))
    loc = []
    if row is not None:
        loc.append(f"row {row}")
    if field is not None:
        loc.append(f"field '{field}'")
    if loc:
        parts.append(", ".join(loc))
    return ": ".join(parts)


def data_error(path: Any, row: int | None, field: str | None, found: Any, expected: str) -> DataError:
    """Build a DataError whose message reads ``file: row 3, field 'e1_end': found 12, expected ...``."""
    shown = found if isinstance(found, str) and found.startswith("<") else repr(found)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return DataError(f"{where(path, row, field)}: found {shown}, expected {expected}")


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> ConfigError:
    """``unknown variant 'spilt'; expected one of [...] (did you mean 'split'?)``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown {kind} '{name}'; expected one of [{', '.join(valid)}]{hint}")


def run_command(prog: str, command, args, interrupted: str) -> int:
    """Run a CLI sub-command: a ToolkitError becomes one line on stderr and exit status 2, Ctrl-C 130."""
    import sys

    try:
        return command(args)
    except ToolkitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr, flush=True)
        return 130
