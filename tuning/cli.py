"""The ``tuning`` command: search, best, show, plot, dashboard."""

from __future__ import annotations

import argparse
from pathlib import Path

from kfold.core.errors import run_command


def _log(msg: str) -> None:
    print(msg, flush=True)


def _parser() -> argparse.ArgumentParser:
    from kfold.core.config import add_config_flags

    ap = argparse.ArgumentParser(prog="tuning", description="Optuna studies whose trials are k-fold runs "
                                 "(each fold's score is a pruning step).")
    sub = ap.add_subparsers(dest="command", required=True)

    def study_args(p):
        p.add_argument("--study", required=True, help="study name")
        p.add_argument("--workdir", default="runs", help="run store root; the default storage lives here")
        p.add_argument("--storage", default="", help="Optuna RDB URL (default: sqlite:///WORKDIR/tuning.db); "
                       "postgresql://... lets several machines work on one study")

    s = sub.add_parser("search", help="run (or resume, or join) a study")
    study_args(s)
    s.add_argument("--n-trials", type=int, default=20, help="trials wanted in the study in total; a rerun only runs "
                   "the ones still missing (0: only help with queued trials)")
    s.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    s.add_argument("--space", default=None, help="JSON/TOML search-space file (default: lr and label smoothing)")
    s.add_argument("--pruner", default="median", choices=("median", "wilcoxon", "none"))
    s.add_argument("--heartbeat", type=int, default=60, help="seconds between trial heartbeats")
    s.add_argument("--grace", type=int, default=180, help="a trial without heartbeat for this long is failed and retried")
    s.add_argument("--sampler-seed", type=int, default=None)
    s.add_argument("--config", default=None, help="base k-fold config file")
    s.add_argument("--preset", default=None, help="a shipped preset as the base (see `kfold presets`)")
    add_config_flags(s)

    b = sub.add_parser("best", help="print the best trial and write it as a `kfold run --config` file")
    study_args(b)
    b.add_argument("--out", default=None, help="config file to write (default: WORKDIR/STUDY-best.json)")

    sh = sub.add_parser("show", help="list the trials")
    study_args(sh)

    pl = sub.add_parser("plot", help="history, parameter importance and intermediate values as PNG")
    study_args(pl)
    pl.add_argument("--out", default=None, help="folder (default: WORKDIR/plots)")

    d = sub.add_parser("dashboard", help="serve optuna-dashboard on the study's storage until Ctrl-C (trials show "
                       "their run folder, fold and OOF scores)")
    study_args(d)
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only; 0.0.0.0 "
                   "serves every network the machine is on)")
    d.add_argument("--port", type=int, default=8080, help="port to listen on")
    return ap


def _settings(args, metric: str = "accuracy", pruner: str = "median"):
    from ._study import StudySettings

    return StudySettings(study=args.study, workdir=args.workdir, storage=args.storage, metric=metric, pruner=pruner,
                         heartbeat=getattr(args, "heartbeat", 60), grace=getattr(args, "grace", 180),
                         sampler_seed=getattr(args, "sampler_seed", None))


def _load(args):
    from ._study import open_study

    return open_study(_settings(args), create=False)


def _cmd_search(args) -> int:
    from kfold.core.config import make_config, overrides_from_args

    from ._space import load_space
    from ._study import search

    base = make_config(args.config, overrides_from_args(args), args.preset)
    space = load_space(args.space)
    done = search(base, _settings(args, base.metric, args.pruner), space, args.n_trials, args.timeout, log=_log)
    _log(f"this process finished {done['COMPLETE']} complete, {done['PRUNED']} pruned, {done['FAIL']} failed trial(s)")
    return 0


def _cmd_best(args) -> int:
    from ._views import write_best

    study = _load(args)
    path, best = write_best(study, args.out or Path(args.workdir) / f"{args.study}-best.json")
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
    _log(f"best trial {best.number}: {study.user_attrs.get('metric', 'value')} {best.value:.3f}  {params}")
    _log(f"wrote {path} (use: kfold run --config {path})")
    return 0


def _cmd_show(args) -> int:
    from ._views import summary_lines

    for line in summary_lines(_load(args)):
        _log(line)
    return 0


def _cmd_plot(args) -> int:
    from ._views import plot

    for path in plot(_load(args), args.out or Path(args.workdir) / "plots"):
        _log(f"wrote {path}")
    return 0


def _cmd_dashboard(args) -> int:
    from ._dashboard import serve_dashboard

    try:
        serve_dashboard(_settings(args), args.host, args.port, log=_log)
    except KeyboardInterrupt:  # the way a dashboard is stopped
        _log("dashboard stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tuning``; returns the exit status (2 for bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    commands = {"search": _cmd_search, "best": _cmd_best, "show": _cmd_show, "plot": _cmd_plot,
                "dashboard": _cmd_dashboard}
    return run_command("tuning", commands[args.command], args, "finished trials are stored, rerun the same command to resume")


if __name__ == "__main__":
    raise SystemExit(main())
