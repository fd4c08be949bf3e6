"""Coverage of the report's 95% intervals by simulation with a known truth (``kfold.report._coverage``): for each
setting (a label prior and a true confusion matrix, P(predicted | gold)), many replicates of n rows are drawn, each
replicate's interval is computed as ``kfold report`` computes it under each resampling scheme, and the share of
intervals holding the population's score is printed (a 95% interval should hold it about 95% of the time).

    python benchmarks/interval_coverage.py --replicates 1000 --json benchmarks/results/interval-coverage.json

Settings: two labels predicted with very different accuracy (the case where holding label counts fixed leaves out
the most spread); a SemEval-like one (19 labels, a large "Other" label that absorbs errors); a KLUE-like one (30
labels, no_relation 30%, rare labels, micro-F1 without no_relation). The figures depend on no CPU, only on the seeds;
the JSON names the machine anyway, with the seconds taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cluster_cpu import print_and_write  # noqa: E402  (shared by the benchmarks: machine line and JSON)

from kfold.report._coverage import simulate_coverage  # noqa: E402  (the simulation the report's scheme was chosen by)


def _confusion(accuracy: np.ndarray, sink: int, to_sink: float) -> np.ndarray:
    """P(predicted | gold): each label right with its accuracy; of its errors, ``to_sink`` go to label ``sink``
    (Other, no_relation), the rest spread evenly over the other labels."""
    k = len(accuracy)
    t = np.zeros((k, k))
    for c in range(k):
        err = 1.0 - accuracy[c]
        others = [j for j in range(k) if j != c and j != sink]
        if c == sink:
            t[c, others] = err / len(others)
        else:
            t[c, sink] = err * to_sink
            t[c, others] = err * (1 - to_sink) / len(others)
        t[c, c] = accuracy[c]
    return t


def settings() -> list[dict]:
    """The simulated settings: name, labels, prior, truth, rows, metrics, no-relation label."""
    out = [{"name": "2 labels, accuracy 100% and 30%", "labels": ["a", "b"], "prior": np.array([0.5, 0.5]),
            "truth": np.array([[1.0, 0.0], [0.7, 0.3]]), "n": 200, "metrics": ["accuracy", "macro_f1"],
            "no_relation": None}]
    k = 19
    names = ["Other"] + [f"R{i // 2}({'e1,e2' if i % 2 == 0 else 'e2,e1'})" for i in range(k - 1)]
    prior = np.r_[0.176, np.geomspace(1.0, 0.1, k - 1)]
    prior[1:] *= (1 - 0.176) / prior[1:].sum()
    out.append({"name": "SemEval-like: 19 directed labels, Other 17.6%", "labels": names, "prior": prior,
                "truth": _confusion(np.linspace(0.95, 0.45, k), 0, 0.6), "n": 2717,
                "metrics": ["accuracy", "micro_f1", "macro_f1", "semeval"], "no_relation": "Other"})
    k = 30
    prior = np.r_[0.30, np.geomspace(1.0, 0.02, k - 1)]
    prior[1:] *= 0.70 / prior[1:].sum()
    out.append({"name": "KLUE-like: 30 labels, no_relation 30%, rare labels", "labels": ["no_relation"] +
                [f"r{i}" for i in range(k - 1)], "prior": prior, "truth": _confusion(np.linspace(0.9, 0.2, k), 0, 0.7),
                "n": 1000, "metrics": ["accuracy", "micro_f1", "macro_f1"], "no_relation": "no_relation"})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="")
    ap.add_argument("--title", default="Coverage of the report's 95% intervals, simulated with a known truth")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    args.extra, args.data = [], "simulated (benchmarks/interval_coverage.py settings)"
    rows = []
    for s in settings():
        t0 = time.perf_counter()
        cells = simulate_coverage(s["truth"], s["prior"], s["n"], s["labels"], s["metrics"], replicates=args.replicates,
                                  resamples=args.resamples, seed=args.seed, no_relation=s["no_relation"])
        seconds = time.perf_counter() - t0
        for c in cells:
            rows.append({"setting": s["name"], "n": c.n, "scheme": c.scheme, "metric": c.metric,
                         "replicates": c.replicates, "truth": round(c.truth, 2), "coverage": round(100 * c.coverage, 1),
                         "too_low": round(100 * c.too_low, 1), "too_high": round(100 * c.too_high, 1),
                         "mean_width": round(c.mean_width, 2), "seconds": round(seconds, 1)})
            print(f"{s['name']:<50} n={c.n:<5} {c.scheme:<10} {c.metric:<9} coverage {100 * c.coverage:5.1f}% "
                  f"(below {100 * c.too_low:4.1f}%, above {100 * c.too_high:4.1f}%), mean width {c.mean_width:.2f}",
                  flush=True)
    command = "python benchmarks/interval_coverage.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return print_and_write(args, [command.strip()], rows)


if __name__ == "__main__":
    raise SystemExit(main())
