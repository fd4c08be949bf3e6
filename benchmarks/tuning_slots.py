"""Trials per hour of the product's own `tuning search`, one slot (`--cluster none`) against one trial per slot
on a local Ray runtime (`--cluster local --cpus-per-fold 1`: as many slots as cores). Every arm runs the same
study settings (pruner off, so every trial trains every fold and trial counts compare) in its own fresh workdir
and process, on the first N rows of a data file; the arms take turns, and the machine (CPU model, cores, bf16
hardware) is printed first.

    python benchmarks/tuning_slots.py --data ../shared/data/semeval2010_task8/train.tsv --rows 2000 --n-trials 6

Wall time includes everything a user waits for: Ray's start-up, tokenising, every trial and the study's summary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_cpu import machine, subset, timed_command  # noqa: E402  (shared by the CPU benchmarks)

ARMS = {"none": ["--cluster", "none"], "local-1cpu": ["--cluster", "local", "--cpus-per-fold", "1"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--n-trials", type=int, default=6)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--arms", default=",".join(ARMS))
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    results: dict[str, tuple[float, str]] = {}
    with tempfile.TemporaryDirectory(prefix="tuning-slots-") as tmp:
        data = subset(Path(args.data), args.rows, Path(tmp) / "data")
        for arm in args.arms.split(","):
            work = Path(tmp) / f"w-{arm}"
            cmd = [sys.executable, "-m", "tuning.cli", "search", "--data", str(data), "--workdir", str(work),
                   "--study", "slots", "--n-trials", str(args.n_trials), "--sampler-seed", "0", "--pruner", "none",
                   "--folds", str(args.folds), "--epochs", str(args.epochs), "--variant", "split", *ARMS[arm]]
            proc, wall = timed_command(cmd)
            if proc.returncode != 0:
                return proc.returncode
            done = next((line for line in proc.stdout.splitlines() if line.startswith("this process finished")), "")
            results[arm] = (wall, done)
            print(f"{arm}: {args.n_trials} trials in {wall:.1f} s = {args.n_trials * 3600 / wall:.1f} trials/hour  ({done})",
                  flush=True)
    base = results.get("none", (0.0, ""))[0]
    print(f"\n{args.rows} rows, {args.folds} folds x {args.epochs} epoch(s), {args.n_trials} trials, pruner off")
    for arm, (wall, _) in results.items():
        ratio = f" ({base / wall:.2f}x of none)" if base else ""
        print(f"  {arm:<12} {wall:7.1f} s  {args.n_trials * 3600 / wall:6.1f} trials/hour{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
