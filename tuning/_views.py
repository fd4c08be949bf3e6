"""Looking at a study: the trial list, the best trial as a `kfold run` config, and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfold.core.config import Config, make_config
from kfold.core.errors import ConfigError
from kfold.core.textio import write_json_atomic


def trial_rows(study) -> list[dict[str, Any]]:
    """One dict per trial: number, state, value, params, folds done, seconds, failure reason."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                     "folds_done": t.user_attrs.get("folds_done"), "seconds": t.user_attrs.get("seconds"),
                     "reason": t.user_attrs.get("fail_reason", "")})
    return rows


def summary_lines(study) -> list[str]:
    """The trial table plus how much training pruning saved."""
    rows = trial_rows(study)
    base = study.user_attrs.get("base_config", {})
    k = base.get("folds", 0)
    metric = study.user_attrs.get("metric", "value")
    lines = [f"study '{study.study_name}': {len(rows)} trial(s), metric {metric} ({study.direction.name.lower()})"]
    for r in rows:
        value = f"{r['value']:.3f}" if r["value"] is not None else "-"
        params = " ".join(f"{k_}={v:.3g}" if isinstance(v, float) else f"{k_}={v}" for k_, v in r["params"].items())
        extra = f"  [{r['reason']}]" if r["reason"] else ""
        folds = f"{r['folds_done']}/{k} folds" if r["folds_done"] is not None else ""
        secs = f"{r['seconds']:.0f}s" if r["seconds"] is not None else ""
        lines.append(f"  {r['number']:>3} {r['state']:<8} {value:>8}  {folds:<10} {secs:>6}  {params}{extra}")
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["folds_done"]]
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    if complete and k:
        skipped = sum(k - (r["folds_done"] or 0) for r in pruned)
        line = f"pruned {len(pruned)} of {len(rows)} trials: {skipped} fold trainings skipped"
        # the time saved needs a measured time per fold (trials recorded as 0.0 s give none)
        timed = [r for r in complete if r["seconds"]]
        if timed:
            per_fold = sum(r["seconds"] / r["folds_done"] for r in timed) / len(timed)
            spent = sum(r["seconds"] or 0 for r in rows)
            line += (f", about {skipped * per_fold / 60:.1f} min saved ({skipped * per_fold / max(spent + skipped * per_fold, 1e-9) * 100:.0f}% "
                     f"of the time the study would have taken without pruning)")
        lines.append(line)
    return lines


def best_config(study) -> tuple[Config, Any]:
    """The study's base config with the best trial's parameters applied, and that trial."""
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study '{study.study_name}' has no completed trial yet") from None
    base = study.user_attrs.get("base_config")
    if base is None:
        raise ConfigError(f"study '{study.study_name}' was not made by `tuning search` (no base config)")
    return make_config(None, {**base, **best.params}), best


def write_best(study, path: str | Path) -> tuple[Path, Any]:
    """Write the best trial as a config file that `kfold run --config` accepts."""
    cfg, best = best_config(study)
    path = write_json_atomic(path, {"config": cfg.to_dict(), "study": study.study_name, "trial": best.number,
                                    "value": best.value, "params": best.params})
    return Path(path), best


def study_figures(study, names: tuple[str, ...] = ("history", "intermediate", "importance")) -> list[tuple[str, Any]]:
    """Optuna's matplotlib figures of a study: optimisation history, intermediate values and (with two complete
    trials that have parameters) parameter importance, as (name, figure) pairs; ``tuning plot`` saves them and
    ``kfold report`` embeds them."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import optuna.visualization.matplotlib as vm

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    plots = [("history", vm.plot_optimization_history), ("intermediate", vm.plot_intermediate_values)]
    if len(complete) >= 2 and len(complete[0].params) >= 1:
        plots.append(("importance", vm.plot_param_importances))
    out = []
    for name, fn in plots:
        if name not in names:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            ax = fn(study)
        fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        out.append((name, fig))
    return out


def plot(study, out_dir: str | Path) -> list[Path]:
    """Optimisation history, parameter importance and intermediate values as PNG files."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in study_figures(study):
        path = out_dir / f"{study.study_name}-{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
