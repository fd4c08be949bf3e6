"""What a toolkit run sends to its tracker run, read from what the driver writes to the store, so the live path (the
driver, as each part is written) and the upload afterwards (``kfold report --to``) send the same keys:

- parameters: the resolved config (``config.json``'s ``config``), tags: the run name, workdir and any extra tags;
- per part (``fold<k>/...``, ``refit/...``) at ``step`` = epoch: ``train_loss``, ``epoch_seconds`` and the
  validation scores of that epoch (``valid_<metric>``; none with ``--no-epoch-scores``), sent as the epoch's line
  reaches the driver (live, from a Ray worker too) or else with the part; the averaged weights' scores (``averaged_valid_<metric>``) at the last epoch; the fold's end scores (``end_valid_<metric>``),
  ``wall_seconds`` and ``train_rows_per_s`` at the last epoch;
- when the folds are assembled: the OOF scores (``oof/<metric>``) and ``summary.json``.

Test labels never reach a tracker: a part's record holds validation scores only (training never scores the
test rows).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kfold.core.errors import ToolkitError
from kfold.core.store import REFIT, RunDir
from kfold.core.textio import read_json

_NOT_SCORES = ("epoch", "averaged_epochs", "train_loss", "seconds")


def part_prefix(part: int | str) -> str:
    """``fold2`` or ``refit``."""
    return "refit" if part == REFIT else f"fold{part}"


def _finite(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def epoch_metrics(part: int | str, entry: dict) -> tuple[dict[str, float], int]:
    """(values, step) of one epoch's ``history`` entry: sent as the epoch's line arrives, or with the part."""
    prefix = part_prefix(part)
    scores = {k: v for k, v in entry.items() if k not in _NOT_SCORES}
    values = {f"{prefix}/train_loss": entry.get("train_loss"), f"{prefix}/epoch_seconds": entry.get("seconds"),
              **{f"{prefix}/valid_{k}": v for k, v in scores.items()}}
    return _finite(values), int(entry["epoch"])


def part_metrics(part: int | str, record: dict, sent: set[int] = frozenset()) -> list[tuple[dict[str, float], int]]:
    """(values, step) pairs of one part's completion record (see the module docstring for the keys), without the
    epochs in ``sent`` (already sent as their lines arrived)."""
    prefix = part_prefix(part)
    out: list[tuple[dict[str, float], int]] = []
    last = 0
    for entry in record.get("history", []):
        if entry.get("epoch") == "average":
            scores = {k: v for k, v in entry.items() if k not in _NOT_SCORES}
            step = max(entry.get("averaged_epochs") or [last])
            out.append((_finite({f"{prefix}/averaged_valid_{k}": v for k, v in scores.items()}), step))
            continue
        last = int(entry["epoch"])
        if last not in sent:
            out.append(epoch_metrics(part, entry))
    end = {f"{prefix}/end_valid_{k}": v for k, v in (record.get("metrics") or {}).items()}
    end.update({f"{prefix}/wall_seconds": record.get("wall_seconds"),
                f"{prefix}/train_rows_per_s": record.get("train_examples_per_s")})
    out.append((_finite(end), last))
    return [(values, step) for values, step in out if values]


def oof_metrics(scores: dict[str, Any]) -> dict[str, float]:
    """``oof/<metric>`` of the assembled OOF scores."""
    return _finite({f"oof/{k}": v for k, v in scores.items()})


def log_part(trackers, run: RunDir, part: int | str, record: dict, sent: set[int] = frozenset()) -> None:
    """Queue one written part's metrics (without the epochs in ``sent``: see :func:`part_metrics`)."""
    for values, step in part_metrics(part, record, sent):
        trackers.metrics(run.root, values, step)


def log_epoch(trackers, run: RunDir, part: int | str, entry: dict) -> int:
    """Queue one epoch's metrics as its line arrives from the part; returns the epoch."""
    values, step = epoch_metrics(part, entry)
    trackers.metrics(run.root, values, step)
    return step


def log_assembled(trackers, run: RunDir, scores: dict[str, Any]) -> None:
    """Queue the OOF scores and ``summary.json`` of an assembled run."""
    trackers.metrics(run.root, oof_metrics(scores), 0)
    if run.summary_path.exists():
        trackers.artifact(run.root, run.summary_path)


def run_tags(run: RunDir, workdir: str | Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The tags of a run's tracker run: its name and workdir, plus ``extra`` (a tuning trial's number)."""
    return {"rekfold.run": run.name, "rekfold.workdir": str(Path(workdir).resolve()), **(extra or {})}


def upload_workdir(trackers, workdir: str | Path, runs: list[RunDir], files: list[Path] = (),
                   log=print) -> int:
    """Send existing runs to the trackers afterwards (``kfold report --to``): each run's config, its complete
    parts, its OOF scores and summary, and ``files`` (report.html) to every run; runs without a complete part are
    skipped, a run whose records cannot be read is said in one line and skipped. A run already sent (live with
    ``--report-to``, or before) is reattached and its points are sent again. Returns the runs sent."""
    sent = 0
    for run in runs:
        if not run.config_path.exists() or not any(run.root.glob("*/done.json")):
            continue  # not a run, or one with no complete part: nothing to send
        try:
            _upload_run(trackers, workdir, run, files)
        except ToolkitError as exc:  # a damaged record: this run is left out, the others are sent
            log(f"warning: {run.name} not sent: {exc}")
            continue
        sent += 1
    return sent


def _upload_run(trackers, workdir: str | Path, run: RunDir, files) -> None:
    """One run of :func:`upload_workdir`."""
    config = run.read_config()
    trackers.open_run(run.root, run.name, config.get("config", {}), run_tags(run, workdir))
    k = int(config.get("config", {}).get("folds", 0))
    for part in list(range(k)) + [REFIT]:
        record = run.fold_record(part)
        if record is not None:
            log_part(trackers, run, part, record)
    if run.summary_path.exists():
        log_assembled(trackers, run, read_json(run.summary_path).get("oof", {}))
    for path in files:
        trackers.artifact(run.root, path)
    trackers.close_run(run.root)
