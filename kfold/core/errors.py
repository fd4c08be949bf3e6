"""The project's one exception hierarchy (torch-free: ensemble and submissions use it too).

Every message names where the problem is (file, row, field), what was found and what was
expected, so the command-line tools can print it as one line and exit with status 2.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


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


class RuntimeLost(TrainingError):
    """The engine that runs the parts is gone (a Ray runtime's local node, the head, the connection to a
    cluster): no part can finish on it. Completed parts are kept; the same command resumes."""


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


def _problem_text(path: Any, row: int | None, field: str | None, found: Any, expected: str) -> str:
    """``file: row 3, field 'e1_end': found 12, expected ...`` (long values shortened)."""
    shown = found if isinstance(found, str) and found.startswith("<") else repr(found)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{where(path, row, field)}: found {shown}, expected {expected}"


def data_error(path: Any, row: int | None, field: str | None, found: Any, expected: str) -> DataError:
    """Build a DataError whose message reads ``file: row 3, field 'e1_end': found 12, expected ...``."""
    return DataError(_problem_text(path, row, field, found, expected))


@dataclass(frozen=True)
class Problem:
    """One problem in a data file: where, what kind (for the summary's counts) and the full message."""

    path: str
    row: int | None
    kind: str
    text: str
    field: str | None = None

    @property
    def row_level(self) -> bool:
        """A problem of one row that leaving the row out removes (``--bad-rows skip``); the others are the file's
        (no rows, a quote never closed, a broken CSV) and stop it whatever is skipped."""
        return self.row is not None and self.kind not in FILE_LEVEL_KINDS


#: Problem kinds that are the whole file's, never one row's (see :attr:`Problem.row_level`).
FILE_LEVEL_KINDS = ("empty file", "unclosed quote", "broken CSV")


class DataProblems(DataError):
    """Every problem found in one or more data files (readers list them all instead of stopping at the first).

    ``str()`` is the summary line (or the one problem's line); :meth:`lines` gives the summary and one line per
    problem, which the command-line tools print.
    """

    def __init__(self, problems: Sequence[Problem], hint: str = ""):
        # in file order: files as first met, rows ascending (a reader finds some before validation finds others)
        files = {p.path: n for n, p in reversed(list(enumerate(problems)))}
        self.problems = sorted(problems, key=lambda p: (files[p.path], p.row if p.row is not None else -1))
        #: training rows that ``--bad-rows skip`` would leave out, and the name of the file that would list them
        #: (set by the reader of a training file)
        self.skippable: list = []
        self.skip_list = ""
        #: the last line: what to do (``N rows cannot be repaired; --bad-rows skip ...``)
        self.hint = hint
        super().__init__(self.problems[0].text if len(self.problems) == 1 else self.summary())

    def __str__(self) -> str:
        first = self.problems[0].text if len(self.problems) == 1 else self.summary()
        return f"{first}; {self.hint}" if self.hint else first

    def summary(self) -> str:
        """``3 problems in 2 rows of train.tsv: 2 offsets, 1 unknown label``."""
        rows = {(p.path, p.row) for p in self.problems}
        files = sorted({p.path for p in self.problems})
        kinds = Counter(p.kind for p in self.problems)
        where_ = files[0] if len(files) == 1 else f"{len(files)} files"
        n = len(self.problems)
        return (f"{n} problem{'s' if n != 1 else ''} in {len(rows)} row{'s' if len(rows) != 1 else ''} of {where_}: "
                + ", ".join(f"{c} {k}" for k, c in kinds.most_common()))

    def lines(self, limit: int | None = 50, hint: str = "") -> list[str]:
        """The summary, then one line per problem (at most ``limit``, then 'and N more' with ``hint``), then
        :attr:`hint` (what to do) as the last line; a single problem is one line, with the hint after it."""
        if len(self.problems) == 1:
            return [str(self)]
        shown = self.problems if limit is None else self.problems[:limit]
        out = [self.summary()] + [f"  {p.text}" for p in shown]
        if len(shown) < len(self.problems):
            out.append(f"  and {len(self.problems) - len(shown)} more" + (f" ({hint})" if hint else ""))
        return out + ([self.hint] if self.hint else [])


class ProblemList:
    """Collects the problems of one file while a reader goes on with the next row."""

    def __init__(self, path: Any):
        self.path = str(path)
        self.problems: list[Problem] = []

    def add(self, row: int | None, field: str | None, found: Any, expected: str, kind: str) -> None:
        self.problems.append(Problem(self.path, row, kind, _problem_text(self.path, row, field, found, expected), field))

    def add_error(self, exc: DataError, row: int | None, kind: str) -> None:
        """Record a DataError raised by a helper (its message already names file, row and field)."""
        self.problems.extend(exc.problems if isinstance(exc, DataProblems) else [Problem(self.path, row, kind, str(exc))])

    def __bool__(self) -> bool:
        return bool(self.problems)

    def raise_if_any(self) -> None:
        if self.problems:
            raise DataProblems(self.problems)


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
    except DataProblems as exc:
        # a command with --all (check-data) shows every problem on request; the others point to it
        lines = exc.lines(None if getattr(args, "all", False) else 50,
                          hint="--all lists every one" if hasattr(args, "all") else "`kfold check-data FILE --all` lists every one")
        print(f"{prog}: error: " + "\n".join(lines), file=sys.stderr, flush=True)
        return 2
    except ToolkitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr, flush=True)
        return 130
