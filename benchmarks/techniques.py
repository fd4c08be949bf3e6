"""A technique against the same run without it, through the product's own command; writes the figures as JSON
(``--json``) for the docs' generated tables (``python docs/generate.py``) and for ``kfold auto``'s planner.

Each arm is one ``kfold run`` into the same workdir (so the same fold map), named by ``--tag ARM``, with the common
flags after ``--`` and the arm's own flags; an arm already complete is read, not trained again. For every arm
against the first (the baseline) it reports, on each ``--metrics`` metric:

- the honest OOF score and the paired bootstrap of the difference over the OOF rows (the same resampled rows for
  both runs, 2000 plain resamples: rows drawn with replacement, labels not held fixed), as a 95% percentile interval;
- with ``--test`` and gold labels there, the same on the test rows, from the run's test prediction (the refit's with
  ``--refit``);
- minutes (the folds' and refit's wall time from their completion records: other load on the machine moves them);
  for adversarial arms the cost per step the run measured itself (its epochs' seconds against the same seconds less
  the adversarial passes: both parts of every step share whatever else loads the machine, so the ratio holds under
  load, where a comparison of two runs' times would not).

``--pretrain NAME=FLAGS`` (repeatable) first runs ``kfold pretrain --data DATA --out WORKDIR/NAME FLAGS``; an arm's
flags name the folder as ``{NAME}`` (``tapt=--backbones {tapt}``), and its row gets the pretraining's minutes, MLM
loss per epoch and whether test text was used, from the folder's record. A pseudo-labelled arm's row
(``--pseudo-from``) gets its teachers, mode and rows added per part with their labels' accuracy on the test file's
own labels, from the run's config.json.

    python benchmarks/techniques.py --data ../shared/data/semeval2010_task8/train.tsv \\
        --test ../shared/data/semeval2010_task8/test.tsv --workdir /tmp/tech/semeval \\
        --arms "none=;fgm=--adversarial fgm;awp=--adversarial awp" --metrics semeval,accuracy \\
        --json benchmarks/results/semeval-adversarial.json \\
        -- --folds 2 --variants split --epochs 2 --average-epochs 1 --max-len 128 --metric semeval --refit --cluster none

Name the CPU with every figure: the JSON records it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backbones import _kfold  # noqa: E402  (one product command, timed)
from cluster_cpu import parse_with_extra, print_and_write  # noqa: E402  (shared by the CPU benchmarks)

RESAMPLES = 2000


def paired_difference(fn, y: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """``fn(y, a) - fn(y, b)`` and the 95% percentile interval of the paired bootstrap over rows."""
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(y), np.full(len(y), 1.0 / len(y)), size=RESAMPLES).astype(float)
    diffs = np.asarray(fn(y, a, weights)) - np.asarray(fn(y, b, weights))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": round(fn(y, a) - fn(y, b), 2), "ci": [round(float(lo), 2), round(float(hi), 2)],
            "p_better": round(float(np.mean(diffs > 0) + 0.5 * np.mean(diffs == 0)), 3)}


def _run_dir(workdir: Path, arm: str) -> Path:
    """The arm's run (one training seed per arm: the comparison is a paired bootstrap over rows)."""
    found = [p for p in (workdir / "runs").glob(f"*-{arm}") if (p / "summary.json").exists()]
    if len(found) != 1:
        raise SystemExit(f"{workdir}: expected one complete run tagged {arm} (one seed per arm), found {len(found)}")
    return found[0]


def _test_gold(test: str, ids: np.ndarray, names: tuple[str, ...]) -> np.ndarray | None:
    """The test file's gold labels in the order of ``ids`` (None when it has none)."""
    from kfold.data import read_dataset

    ds = read_dataset(test, names, role="test")
    if not ds.labelled:
        return None
    where = {str(i): k for k, i in enumerate(ds.ids)}
    return ds.y[[where[str(i)] for i in ids]]


def arm_figures(run: Path) -> dict:
    """Minutes and, for adversarial runs, the run's own measure of the cost per step in the epochs with passes."""
    records = [json.loads(p.read_text()) for p in sorted(run.glob("*/done.json"))]
    adv = [h for r in records for h in r["history"] if isinstance(h.get("epoch"), int) and h.get("adv_seconds")]
    cost = (sum(h["seconds"] for h in adv) / sum(h["seconds"] - h["adv_seconds"] for h in adv)) if adv else None
    return {"minutes": round(sum(r["wall_seconds"] for r in records) / 60, 1),
            "cost_per_step": round(cost, 2) if cost else None}


def pretrain_figures(flags: str, folders: dict[str, Path]) -> dict:
    """The pretraining an arm's backbone comes from (its record), or nothing."""
    for name, folder in folders.items():
        if "{" + name + "}" in flags:
            record = json.loads((folder / "rekfold-build.json").read_text())
            return {"pretrain": {"folder": name, "minutes": record["minutes"], "steps": record["steps"],
                                 "mlm_loss": [round(e["loss"], 4) for e in record["epochs"]],
                                 "test_text_used": record["identity"]["test_text_used"]}}
    return {}


def pseudo_figures(run: Path) -> dict:
    """A pseudo-labelled arm's teachers, mode and rows added per part, with their labels' accuracy on the test
    file's own labels (from the run's config.json), or nothing."""
    record = json.loads((run / "config.json").read_text()).get("pseudo")
    if not record:
        return {}
    return {"pseudo": {"teachers": record["teachers"], "folds": record["folds"], "targets": record["targets"],
                       "threshold": record["threshold"], "max_share": record["max_share"],
                       "parts": {part: {k: p[k] for k in ("rows", "real_rows", "accuracy_on_test_labels") if k in p}
                                 for part, p in record["parts"].items()}}}


def compare(workdir: Path, flags: dict[str, str], metrics: list[str], test: str,
            folders: dict[str, Path] | None = None) -> list[dict]:
    """One row per arm: its scores, and its paired differences against the first arm."""
    from kfold.core.metrics import has_directions, metric_fn, softmax
    from kfold.core.store import RunDir, load_predictions

    arms = list(flags)
    runs = {arm: RunDir(_run_dir(workdir, arm)) for arm in arms}
    oof = {arm: load_predictions(r.oof_path) for arm, r in runs.items()}
    base = arms[0]
    names = oof[base].label_names
    rows = []
    tests = {arm: load_predictions(r.test_path) for arm, r in runs.items() if test and r.test_path.exists()}
    y_test = _test_gold(test, tests[base].ids, names) if base in tests else None
    for arm in arms:
        if not np.array_equal(oof[arm].ids, oof[base].ids) or oof[arm].fold_map_hash != oof[base].fold_map_hash:
            raise SystemExit(f"{runs[arm].root}: other rows or another fold map than {runs[base].root}")
        row = {"arm": arm, "run": runs[arm].name, "flags": flags[arm], "labels": len(names),
               "directed": has_directions(names), "rows": len(oof[arm].ids), **arm_figures(runs[arm].root),
               **pretrain_figures(flags[arm], folders or {}), **pseudo_figures(runs[arm].root)}
        for metric in metrics:
            fn = metric_fn(metric, names)
            a, b = softmax(oof[arm].logits), softmax(oof[base].logits)
            row[f"oof_{metric}"] = round(fn(oof[base].y, a), 2)
            if arm != base:
                row[f"oof_{metric}_vs_{base}"] = paired_difference(fn, oof[base].y, a, b)
            if y_test is not None:
                ta, tb = softmax(tests[arm].logits), softmax(tests[base].logits)
                row[f"test_{metric}"] = round(fn(y_test, ta), 2)
                if arm != base:
                    row[f"test_{metric}_vs_{base}"] = paired_difference(fn, y_test, ta, tb)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--test", default="", help="a test file (scored where it has gold labels)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--arms", required=True, help='"NAME=FLAGS;NAME=FLAGS", the first the baseline')
    ap.add_argument("--pretrain", action="append", default=[], help='NAME=FLAGS: kfold pretrain into WORKDIR/NAME first')
    ap.add_argument("--metrics", default="accuracy")
    ap.add_argument("--only", default="", help="train only these arms now (comma-separated); compare every arm")
    ap.add_argument("--json", default="", help="write the figures here (the docs' tables are generated from it)")
    ap.add_argument("--title", default="")
    ap.add_argument("--note", default="")
    args = parse_with_extra(ap, argv)  # the product command's own flags after --
    arms = dict(part.split("=", 1) for part in args.arms.split(";"))
    workdir = Path(args.workdir)
    commands, folders = [], {}
    for entry in args.pretrain:
        name, flags = entry.split("=", 1)
        folders[name] = workdir / name
        command = ["pretrain", "--data", args.data, "--out", str(folders[name]), *shlex.split(flags)]
        commands.append("kfold " + " ".join(shlex.quote(c) for c in command))
        _kfold(command)  # a finished folder is not trained again
    raw = dict(arms)  # as given: {NAME} names a pretrained folder
    arms = {arm: flags.format(**{k: str(v) for k, v in folders.items()}) if folders else flags
            for arm, flags in arms.items()}
    for arm, flags in arms.items():
        command = ["run", "--data", args.data, "--workdir", str(workdir), *(["--test", args.test] if args.test else []),
                   "--tag", arm, *args.extra, *shlex.split(flags)]
        commands.append("kfold " + " ".join(shlex.quote(c) for c in command))
        if not args.only or arm in args.only.split(","):
            _kfold(command)  # resumable: a complete run trains nothing again
    rows = compare(workdir, raw, args.metrics.split(","), args.test, folders)
    return print_and_write(args, commands, rows)


if __name__ == "__main__":
    raise SystemExit(main())
