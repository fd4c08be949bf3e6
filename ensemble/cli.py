"""The ``ensemble`` command: blend runs into a leaderboard file, compare methods, check files. Torch-free."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from kfold.core.errors import ConfigError, run_command
from kfold.core.metrics import METRICS, all_scores, metric_name
from submissions import FORMATS, check_submission, predicted_labels

from ._blenders import METHODS, make_blender
from ._honest import TIE, choose_method, compare_methods
from ._members import DEFAULT_TEST_SOURCE, TEST_SOURCES, load_members, resolve_test_source, select_runs
from ._write import write_blend


def _log(msg: str) -> None:
    print(msg, flush=True)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ensemble", description="Blend k-fold runs (fit on OOF logits only) and "
                                 "write validated leaderboard files.")
    sub = ap.add_subparsers(dest="command", required=True)

    def members_args(p):
        p.add_argument("--workdir", default="runs", help="run store root (default: runs)")
        p.add_argument("--runs", default="all", help="all, a glob (split-*) or a comma-separated list of run names")
        p.add_argument("--metric", default="accuracy", choices=METRICS, help="metric reported (and optimised by --objective metric)")
        p.add_argument("--objective", default="logloss", choices=("logloss", "metric"),
                       help="what weighted/caruana optimise on OOF (default logloss: smoother, overfits less)")
        p.add_argument("--temperature", action="store_true", help="soft: fit a temperature per member on its OOF logits")
        p.add_argument("--no-relation", default=None, help="label left out of micro-F1 (default: detected)")

    blend = sub.add_parser("blend", help="fit a blend on OOF logits and write the leaderboard file + manifest")
    members_args(blend)
    blend.add_argument("--method", default="soft", choices=list(METHODS) + ["best"],
                       help="best: every method scored by nested CV, the best honest one (a simpler one within "
                            "0.05 points); soft: mean probability; weighted: OOF-fitted weights; caruana: greedy selection with "
                            "replacement; rank: mean per-label rank over rows (drops class priors: for ranking "
                            "metrics such as AUPRC rather than accuracy); hard: majority vote; stack: logistic "
                            "regression on the members' logits")
    blend.add_argument("--format", default="pstage2", choices=FORMATS, help="leaderboard file format")
    blend.add_argument("--out", default=None, help="output file (default: WORKDIR/submissions/METHOD-N.csv)")
    blend.add_argument("--force", action="store_true", help="overwrite an existing output file")
    blend.add_argument("--test-name", default="test.npz", help="test predictions in each run folder: test.npz, "
                       "or predict-<file>.npz from `kfold predict`")
    blend.add_argument("--test-source", default=None, choices=TEST_SOURCES,
                       help="each member's test logits: the mean of its fold models, its refit on every row "
                            f"(`kfold run --refit`), or both averaged (default: {DEFAULT_TEST_SOURCE} when every member "
                            "has a refit, else folds; weights are always fitted on OOF)")

    comp = sub.add_parser("compare", help="honest OOF score of every method on the selected runs (writes nothing)")
    members_args(comp)
    comp.add_argument("--methods", default=",".join(METHODS))

    chk = sub.add_parser("check", help="validate a leaderboard file against its format and the test file")
    chk.add_argument("file")
    chk.add_argument("--format", required=True, choices=FORMATS)
    chk.add_argument("--test", required=True, help="the test file (its ids and order; scored when it has labels)")
    chk.add_argument("--labels", default=None, help="label file (default: found next to the test file)")
    return ap


def _blender(args, method: str, label_names):
    metric = args.metric if args.objective == "metric" else "logloss"
    return make_blender(method, metric=metric, label_names=list(label_names), no_relation=args.no_relation,
                        temperature=args.temperature)


def _results(args, members, methods: list[str]):
    """Every method's fitted blend and honest scores on the members."""
    return compare_methods(lambda m: _blender(args, m, members.label_names), methods, members.names, members.oof,
                           members.y, members.folds, args.metric, members.label_names, args.no_relation)


def _cmd_blend(args) -> int:
    runs = select_runs(args.workdir, args.runs)
    source = resolve_test_source(runs, args.test_source) if args.test_name == "test.npz" else "folds"
    if source != "folds":
        _log(f"test rows predicted by each member's {'refit' if source == 'refit' else 'fold models and refit'} "
             "(--test-source; weights fitted on OOF)")
    members = load_members(runs, need_test=True, test_name=args.test_name, test_source=source)
    if args.method == "best":  # every method scored honestly; the best honest one (a simpler one on a near-tie)
        results = _results(args, members, list(METHODS))
        _print_comparison(members, results, args.metric)
        result = next(r for r in results if r.method == choose_method({r.method: r.scores.honest for r in results}, args.metric))
    else:
        result = _results(args, members, [args.method])[0]
    for line in result.scores.lines():
        _log(line)
    out = Path(args.out) if args.out else Path(args.workdir) / "submissions" / f"{result.method}-{len(members.names)}members.csv"
    path, _ = write_blend(members, result, args.format, out, metric=args.metric, test_source=source,
                          no_relation=args.no_relation, force=args.force, test_name=args.test_name,
                          command=" ".join(shlex.quote(a) for a in ["ensemble"] + sys.argv[1:]))
    _log(f"wrote {path} ({len(members.test_ids)} rows, format {args.format}, method {result.method}) and "
         f"{path.name}.manifest.json")
    return 0


def _print_comparison(members, results, metric: str) -> None:
    """The table of `ensemble compare`, with the method `--method best` / `kfold auto` would choose."""
    chosen = choose_method({r.method: r.scores.honest for r in results}, metric)
    best_name, best = results[0].scores.best_member
    _log(f"{len(members.names)} members on fold map {members.fold_map_hash[:12]}; best single run: {best_name} "
         f"{metric_name(metric, results[0].scores.auprc_over)} {best:.2f}")
    _log(f"{'method':<9} {'honest OOF':>10} {'in-sample':>9} {'gain':>6} {'seconds':>7}  weights")
    for r in results:
        s = r.scores
        top = ", ".join(f"{n} {w:.2f}" for n, w in sorted(s.weights.items(), key=lambda kv: -kv[1])[:4])
        mark = "  <- chosen" if r.method == chosen else ""
        _log(f"{r.method:<9} {s.honest:>10.2f} {s.in_sample:>9.2f} {s.gain:>+6.2f} {r.seconds:>7.1f}  {top}{mark}")
    _log(f"chosen: {chosen} (best honest score; a simpler method wins within {TIE} points)")


def _cmd_compare(args) -> int:
    members = load_members(select_runs(args.workdir, args.runs), need_test=False)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"--methods: unknown method '{m}'; expected one of [{', '.join(METHODS)}]")
    _print_comparison(members, _results(args, members, methods), args.metric)
    return 0


def _cmd_check(args) -> int:
    from kfold.data import read_dataset

    test = read_dataset(args.test, args.labels, role="test", id_start=8001)
    n = check_submission(args.file, args.format, [ex.id for ex in test.examples], test.label_names)
    _log(f"{args.file}: valid {args.format} file, {n} rows matching {args.test}")
    if test.labelled:
        index = {n: i for i, n in enumerate(test.label_names)}
        pred = [index[n] for n in predicted_labels(args.file, args.format, test.label_names)]
        scores = all_scores(test.y, np.eye(len(test.label_names))[pred], test.label_names)
        # only the predicted labels are scored, so the probability-based scores would be meaningless
        _log("scored against the labels in the test file: "
             + " ".join(f"{k} {v:.2f}" for k, v in scores.items() if k not in ("auprc", "logloss")))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ensemble``; returns the exit status (2 for bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    commands = {"blend": _cmd_blend, "compare": _cmd_compare, "check": _cmd_check}
    return run_command("ensemble", commands[args.command], args, "existing files are untouched")


if __name__ == "__main__":
    raise SystemExit(main())

