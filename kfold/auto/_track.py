"""``kfold auto --report-to``: auto's runs go to the trackers like any run's (through the runner), and auto itself
is one more tracker run, ``kfold-auto``: its config and budget when it starts, then its log (the plan, each step,
the chosen blend), the blend's honest score and, with a labelled test file, that file's score under a name that
says it is a test score."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

from kfold.core.textio import write_text_atomic

#: ``kfold auto``'s own folder in the workdir: its tracker run's id and log.
AUTO_FOLDER = "auto"


def kept(log: Callable[[str], None], lines: list[str]) -> Callable[[str], None]:
    def both(line: str) -> None:
        lines.append(line)
        log(line)

    return both


def auto_trackers(settings, log):
    """``--report-to``: the command's trackers (its runs, and one tracker run for auto itself: its config and
    budget, then its log with the plan and the chosen blend), or None."""
    from kfold.tracking import trackers_for

    base = settings.base
    trackers = trackers_for(base, settings.workdir, log)
    if trackers:
        folder = Path(settings.workdir) / AUTO_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        trackers.open_run(folder, "kfold-auto", {**base.to_dict(), "budget_seconds": settings.budget,
                                                 "dry_run": settings.dry_run},
                          {"rekfold.workdir": str(Path(settings.workdir).resolve()), "rekfold.command": "kfold auto"})
    return trackers


def track_auto(trackers, settings, result, lines: list[str]) -> None:
    """Auto's own tracker run at the end (also after a failure): the chosen blend's honest score, the number of
    runs blended, the labelled test file's score (named as a test score), the log and the file's manifest."""
    folder = Path(settings.workdir) / AUTO_FOLDER
    try:
        with contextlib.suppress(Exception):  # never in the way of auto's own result or error
            _send(trackers, folder, result, lines)
    finally:
        trackers.close(failed=result is None)


def _send(trackers, folder: Path, result, lines: list[str]) -> None:
    if result is not None and result.metric:
        values = {f"blend/honest_oof_{result.metric}": result.honest, "blend/members": len(result.members),
                  "auto/minutes": result.seconds / 60}
        values.update({f"labelled_test_file/{k}": v for k, v in
                       (result.manifest.get("test_scores_from_labelled_test_file") or {}).items()})
        trackers.metrics(folder, {k: float(v) for k, v in values.items()}, 0)
    write_text_atomic(folder / "log.txt", "\n".join(lines) + "\n")
    trackers.artifact(folder, folder / "log.txt")
    if result is not None and result.path is not None:
        trackers.artifact(folder, Path(f"{result.path}.manifest.json"))
