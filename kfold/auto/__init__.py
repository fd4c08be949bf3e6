"""``kfold auto``: the best leaderboard file within a time budget. A pure planner (measured speeds, the budget
and a clock in, a plan out) and the thin loop that executes it through the same runner, blender, writer and
checker as the manual commands.

Imports ``kfold.training``, ``ensemble`` and ``submissions``; only the CLI imports it.
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _plan
    "Size": "._plan",
    "Candidate": "._plan",
    "PlannedRun": "._plan",
    "Plan": "._plan",
    "candidates": "._plan",
    "versions": "._plan",
    "choose_shape": "._plan",
    "make_plan": "._plan",
    "fold_seconds": "._plan",
    "run_seconds": "._plan",
    "refit_seconds": "._plan",
    "run_parts": "._plan",
    "makespan": "._plan",
    "fillers": "._plan",
    "FILL": "._plan",
    "reserve_seconds": "._plan",
    "averaged_for": "._plan",
    "MIN_EPOCHS": "._plan",
    "FOLD_CHOICES": "._plan",
    # _auto
    "AutoSettings": "._auto",
    "AutoResult": "._auto",
    "BudgetReached": "._auto",
    "run_auto": "._auto",
    "parse_budget": "._auto",
    "command_line": "._auto",
    "SHAPE_FILE": "._auto",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
