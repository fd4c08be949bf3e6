"""The ``ensemble`` command: blend runs into a leaderboard file, compare methods, check files. Torch-free."""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from kfold._errors import ConfigError, run_command
from kfold._metrics import METRICS, all_scores
from kfold._textio import write_json_atomic
from submissions import FORMATS, check_submission, write_submission

from ._blenders import METHODS, make_blender
from ._honest import score_blend
from ._members import load_members, select_runs


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
    blend.add_argument("--method", default="soft", choices=list(METHODS),
                       help="soft: mean probability; weighted: OOF-fitted weights; caruana: greedy selection with "
                            "replacement; rank: mean per-label rank over rows (drops class priors: for ranking "
                            "metrics such as AUPRC rather than accuracy); hard: majority vote; stack: logistic "
                            "regression on the members' logits")
    blend.add_argument("--format", default="pstage2", choices=FORMATS, help="leaderboard file format")
    blend.add_argument("--out", default=None, help="output file (default: WORKDIR/submissions/METHOD-N.csv)")
    blend.add_argument("--force", action="store_true", help="overwrite an existing output file")
    blend.add_argument("--test-name", default="test.npz", help="test predictions in each run folder: test.npz, "
                       "or predict-<file>.npz from `kfold predict`")

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


def _cmd_blend(args) -> int:
    members = load_members(select_runs(args.workdir, args.runs), need_test=True, test_name=args.test_name)
    blender = _blender(args, args.method, members.label_names)
    t0 = time.perf_counter()
    fitted, scores, _ = score_blend(blender, members.names, members.oof, members.y, members.folds, args.metric,
                                    members.label_names, args.no_relation)
    for line in scores.lines():
        _log(line)
    probs = fitted.predict_proba(members.test)
    out = Path(args.out) if args.out else Path(args.workdir) / "submissions" / f"{args.method}-{len(members.names)}members.csv"
    path = write_submission(out, args.format, [str(i) for i in members.test_ids], members.label_names, probs, force=args.force)
    manifest = {
        "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "format": args.format,
        "method": args.method, "params": fitted.get_params(), "metric": args.metric,
        "honest_oof_score": scores.honest, "in_sample_oof_score": scores.in_sample, "member_oof_scores": scores.members,
        "best_member": scores.best_member[0], "gain_over_best_member": scores.gain, "weights": scores.weights,
        "members": members.names, "fold_map_hash": members.fold_map_hash, "test_rows": len(members.test_ids),
        "command": " ".join(shlex.quote(a) for a in ["ensemble"] + sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - t0, 2),
    }
    if members.test_y is not None and (members.test_y >= 0).all():
        manifest["test_scores_from_labelled_test_file"] = all_scores(members.test_y, probs, members.label_names, args.no_relation)
    write_json_atomic(path.with_name(path.name + ".manifest.json"), manifest)
    _log(f"wrote {path} ({len(members.test_ids)} rows, format {args.format}) and {path.name}.manifest.json")
    return 0


def _cmd_compare(args) -> int:
    members = load_members(select_runs(args.workdir, args.runs), need_test=False)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"--methods: unknown method '{m}'; expected one of [{', '.join(METHODS)}]")
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        _, scores, _ = score_blend(_blender(args, method, members.label_names), members.names, members.oof, members.y,
                                   members.folds, args.metric, members.label_names, args.no_relation)
        rows.append((method, scores, time.perf_counter() - t0))
    best_name, best = rows[0][1].best_member
    _log(f"{len(members.names)} members on fold map {members.fold_map_hash[:12]}; best single run: {best_name} "
         f"{args.metric} {best:.2f}")
    _log(f"{'method':<9} {'honest OOF':>10} {'in-sample':>9} {'gain':>6} {'seconds':>7}  weights")
    for method, s, secs in rows:
        top = ", ".join(f"{n} {w:.2f}" for n, w in sorted(s.weights.items(), key=lambda kv: -kv[1])[:4])
        _log(f"{method:<9} {s.honest:>10.2f} {s.in_sample:>9.2f} {s.gain:>+6.2f} {secs:>7.1f}  {top}")
    return 0


def _cmd_check(args) -> int:
    from kfold._readers import read_dataset

    test = read_dataset(args.test, args.labels, role="test", id_start=8001)
    n = check_submission(args.file, args.format, [ex.id for ex in test.examples], test.label_names)
    _log(f"{args.file}: valid {args.format} file, {n} rows matching {args.test}")
    if test.labelled:
        pred = _predicted_indices(args.file, args.format, test.label_names)
        scores = all_scores(test.y, np.eye(len(test.label_names))[pred], test.label_names)
        # only the predicted labels are scored, so the probability-based scores would be meaningless
        _log("scored against the labels in the test file: "
             + " ".join(f"{k} {v:.2f}" for k, v in scores.items() if k not in ("auprc", "logloss")))
    return 0


def _predicted_indices(path: str, fmt: str, label_names) -> np.ndarray:
    """Predicted label indices of a (checked) leaderboard file."""
    import csv

    index = {n: i for i, n in enumerate(label_names)}
    text = Path(path).read_text(encoding="utf-8-sig")
    if fmt == "semeval":
        return np.array([index[line.split("\t")[1].strip()] for line in text.splitlines() if line.strip()])
    rows = [r for r in csv.reader(text.splitlines()) if r][1:]
    if fmt == "pstage2":
        return np.array([int(r[0]) for r in rows])
    return np.array([index[r[1]] for r in rows])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ensemble``; returns the exit status (2 for bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    commands = {"blend": _cmd_blend, "compare": _cmd_compare, "check": _cmd_check}
    return run_command("ensemble", commands[args.command], args, "existing files are untouched")


if __name__ == "__main__":
    raise SystemExit(main())

