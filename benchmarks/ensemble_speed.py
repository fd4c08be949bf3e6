"""Time every blending method on synthetic logits: 20 members x 9000 OOF rows x 42 labels (the source
competition's size), plus predicting 1000 test rows.

    python benchmarks/ensemble_speed.py            # fit + predict per method
    python benchmarks/ensemble_speed.py --honest   # also the nested-CV honest score (5 fits more)

Targets on the 2-core development machine: soft < 1 s, caruana and weighted < 10 s, stack < 60 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble import honest_oof, make_blender  # noqa: E402
from kfold.core.metrics import score  # noqa: E402

TARGETS = {"soft": 1.0, "weighted": 10.0, "caruana": 10.0, "stack": 60.0}


def synthetic(members: int, rows: int, labels: int, test_rows: int, seed: int = 0):
    """Members of graded skill: gold-label boost between 0.5 and 3.0 over Gaussian noise, with a shared
    error component so that they are correlated, as fold models of one data set are."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels, rows + test_rows)
    shared = rng.normal(size=(rows + test_rows, labels))
    out = np.empty((members, rows + test_rows, labels), dtype=np.float32)
    for m, skill in enumerate(np.linspace(0.5, 3.0, members)):
        z = 0.7 * shared + 0.7 * rng.normal(size=shared.shape)
        z[np.arange(len(y)), y] += skill
        out[m] = z
    return out[:, :rows], y[:rows], out[:, rows:], y[rows:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--rows", type=int, default=9000)
    ap.add_argument("--labels", type=int, default=42)
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--methods", default="soft,weighted,caruana,rank,hard,stack")
    ap.add_argument("--objective", default="logloss", help="weighted/caruana objective: logloss or accuracy")
    ap.add_argument("--honest", action="store_true", help="also time the nested-CV honest score (5 folds)")
    args = ap.parse_args(argv)

    oof, y, test, test_y = synthetic(args.members, args.rows, args.labels, args.test_rows)
    names = ["no_relation"] + [f"r{i}" for i in range(1, args.labels)]
    folds = np.arange(args.rows) % 5
    print(f"{args.members} members x {args.rows} rows x {args.labels} labels; test {args.test_rows} rows")
    print(f"{'method':<9} {'fit+predict s':>13} {'target s':>9} {'test acc':>8}" + (f" {'honest s':>9} {'honest acc':>10}" if args.honest else ""))
    for method in args.methods.split(","):
        blender = make_blender(method, metric=args.objective, label_names=names)
        t0 = time.perf_counter()
        blender.fit(oof, y)
        probs = blender.predict_proba(test)
        secs = time.perf_counter() - t0
        acc = score("accuracy", test_y, probs, names)
        target = TARGETS.get(method)
        line = f"{method:<9} {secs:>13.2f} {('< %g' % target) if target else '-':>9} {acc:>8.2f}"
        if target and secs >= target:
            line += "  (over target)"
        if args.honest:
            t0 = time.perf_counter()
            honest = honest_oof(blender, oof, y, folds)
            line += f" {time.perf_counter() - t0:>9.2f} {score('accuracy', y, honest, names):>10.2f}"
        print(line, flush=True)
    best = max(score("accuracy", test_y, m, names) for m in test)
    print(f"best single member test accuracy: {best:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
