"""The report's numbers as pandas DataFrames, for notebooks (``pip install 'rekfold[notebook]'``). Torch-free.

The same functions the report uses compute them (``build_report``, ``confident_suspects``), so a notebook and
report.html never disagree.
"""

from __future__ import annotations

from pathlib import Path

from kfold.core.errors import ConfigError, StoreError
from kfold.core.metrics import softmax
from kfold.core.store import RunDir, load_predictions


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError("the notebook functions need pandas: pip install 'rekfold[notebook]'") from None
    return pd


def load_report(workdir: str | Path = "runs", metric: str = "accuracy", runs: str = "*", n_boot: int = 1000):
    """The runs table as a DataFrame: one row per complete run, each metric with its 95% interval
    (``accuracy``, ``accuracy_lo``, ``accuracy_hi``...), fold mean and spread, seed spread, P(beats best).

    Example
    -------
    >>> df = load_report("runs", metric="micro_f1")  # doctest: +SKIP
    >>> df.sort_values("micro_f1", ascending=False).head()  # doctest: +SKIP
    """
    pd = _pandas()
    from ._table import build_report

    records = []
    for rows in build_report(workdir, runs, metric, n_boot):
        for r in rows:
            rec = {"run": r.run, "fold_map": r.fold_map_hash, "n": r.n}
            for m, v in r.scores.items():
                rec.update({m: v, f"{m}_lo": r.ci[m][0], f"{m}_hi": r.ci[m][1]})
            rec.update({"fold_mean": r.fold_mean, "fold_std": r.fold_std, "seed_std": r.seed_std, "seeds": r.seeds,
                        "p_beats_best": r.win_rate, "minutes_per_fold": r.fold_minutes})
            records.append(rec)
    return pd.DataFrame.from_records(records)


def load_oof(workdir: str | Path, run: str):
    """A run's out-of-fold probabilities as a DataFrame: ``id``, ``label`` (gold name), ``fold``, then one column
    of probabilities per label (in the run's label order)."""
    pd = _pandas()
    folder = RunDir(Path(workdir) / "runs" / run)
    if not folder.oof_path.exists():
        raise StoreError(f"{folder.oof_path}: file not found; the run is not complete (or the name is wrong)")
    oof = load_predictions(folder.oof_path)
    df = pd.DataFrame(softmax(oof.logits), columns=list(oof.label_names))
    df.insert(0, "fold", oof.folds)
    df.insert(0, "label", [oof.label_names[i] for i in oof.y])
    df.insert(0, "id", oof.ids)
    return df


def suspect_labels(workdir: str | Path = "runs", metric: str = "accuracy"):
    """The likely label errors of the report (confident learning on the best run's OOF probabilities, or on the
    best blend's honest OOF predictions): ``id``, ``given_label``, ``predicted_label``, ``p_predicted``,
    ``p_given``, most suspicious first."""
    pd = _pandas()
    from ._compute import blends, likely_label_errors, same_fold_map
    from ._table import build_report

    tables = build_report(workdir, "*", metric, n_boot=10)
    if not tables:
        raise ConfigError(f"{workdir}: no complete runs (run `kfold run` first)")
    best = tables[0][0].run
    oof = load_predictions(RunDir(Path(workdir) / "runs" / best).oof_path)
    found, _ = likely_label_errors(best, oof, same_fold_map(blends(workdir, oof.label_names), oof))
    return pd.DataFrame([{"id": s.id, "given_label": s.given, "predicted_label": s.predicted,
                          "p_predicted": s.p_predicted, "p_given": s.p_given} for s in found])
