"""A budget stop mid-batch on two slots still ends with a checked file: the product's own `kfold auto --budget 6m
--cluster local` on a SemEval sample, run in this process through `kfold.cli.main`, with the one change that its
clock runs ``--clock`` times faster than the wall clock (1.6: parts seem to take 1.6x what the probe predicted), so
the budget guard fires while the first batch's parts are still queued. Prints the command's own output, then what
it left: the leaderboard file, its members and the folds each run has.

    python benchmarks/auto_stop.py --data ../shared/data/semeval2010_task8/train.tsv \\
        --test ../shared/data/semeval2010_task8/test.tsv --rows 2000 --test-rows 500
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_cpu import machine, subset  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--test-rows", type=int, default=500)
    ap.add_argument("--budget", default="6m")
    ap.add_argument("--clock", type=float, default=1.6, help="how much faster than the wall clock auto's clock runs")
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    from kfold.auto import run_auto
    from kfold.cli import main as kfold_main

    start = time.monotonic()
    # the one change: auto's clock (its default argument) runs --clock times faster than the wall clock
    run_auto.__kwdefaults__["clock"] = lambda: start + (time.monotonic() - start) * args.clock
    with tempfile.TemporaryDirectory(prefix="auto-stop-") as tmp:
        work = Path(args.workdir or Path(tmp) / "w")
        train = subset(Path(args.data), args.rows, Path(tmp) / "train")
        test = subset(Path(args.test), args.test_rows, Path(tmp) / "test")
        out = work / "submission.txt"
        argv = ["auto", "--data", str(train), "--test", str(test), "--budget", args.budget, "--workdir", str(work),
                "--cluster", "local", "--out", str(out)]
        print("kfold " + " ".join(argv), flush=True)
        t0 = time.monotonic()
        code = kfold_main(argv)
        wall = time.monotonic() - t0
        print(f"\nexit status {code} after {wall / 60:.1f} wall min ({wall * args.clock / 60:.1f} min on auto's clock)")
        if out.exists():
            manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
            print(f"file: {out} ({len(out.read_text().splitlines())} rows), members {manifest['members']}, method "
                  f"{manifest['method']}, test source {manifest['test_source']}")
        else:
            print("no file was written")
        for run in sorted((work / "runs").iterdir()):
            folds = sorted(p.parent.name for p in run.glob("*/done.json"))
            print(f"  {run.name}: {', '.join(folds) or 'no part'}; OOF {'assembled' if (run / 'oof.npz').exists() else 'not assembled'}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
