"""tuning: Optuna studies over learning rate and label smoothing (or a space file) whose trials are
k-fold runs, with folds as pruning steps; resumable (SQLite) and distributed (any Optuna RDB URL)."""

from ._space import DEFAULT_SPACE, load_space, suggest
from ._study import StudySettings, open_study, queue_trials, search
from ._views import best_config, plot, summary_lines, trial_rows, write_best

__all__ = ["DEFAULT_SPACE", "StudySettings", "best_config", "load_space", "open_study", "plot", "queue_trials", "search",
           "suggest", "summary_lines", "trial_rows", "write_best"]
