"""tuning: Optuna studies over learning rate and label smoothing (or a space file) whose trials are
k-fold runs, with folds as pruning steps; resumable (SQLite) and distributed (any Optuna RDB URL).

Imports ``kfold.training`` (a trial is ``run_kfold``), ``kfold.tracking`` (``--report-to``: a trial is one tracker
run) and ``kfold.core``; ``tuning dashboard`` serves optuna-dashboard (the dashboard extra).
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _space
    "DEFAULT_SPACE": "._space",
    "load_space": "._space",
    "suggest": "._space",
    # _study
    "StudySettings": "._study",
    "open_study": "._study",
    "queue_trials": "._study",
    "search": "._study",
    # _dashboard
    "serve_dashboard": "._dashboard",
    "dashboard_url": "._dashboard",
    # _views
    "best_config": "._views",
    "plot": "._views",
    "summary_lines": "._views",
    "trial_rows": "._views",
    "write_best": "._views",
    "study_figures": "._views",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
