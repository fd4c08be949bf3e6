"""How long `kfold report` (tables, report.html, suspect_labels.csv) takes on a store of the source competition's
size: synthetic runs of 9000 OOF rows x 42 labels, 5 folds with 5 epochs of history each, and one blend.

    python benchmarks/report_speed.py --runs 50

Prints the wall seconds of the command (the product's own `kfold report`, called in-process), the page size and
the number of embedded images. Target: under 30 s for 50 runs x 42 labels on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kfold.cli import main  # noqa: E402
from kfold.core.store import Predictions, RunDir, save_predictions  # noqa: E402
from kfold.core.textio import write_json_atomic  # noqa: E402


def make_store(root: Path, runs: int, rows: int, labels: int, folds: int, seed: int = 0) -> None:
    """Runs with OOF and test logits of a noisy model of varying skill, and per-fold completion records."""
    rng = np.random.default_rng(seed)
    names = tuple(["관계_없음"] + [f"label_{i:02d}" for i in range(1, labels)])
    y = rng.choice(labels, rows, p=np.r_[0.3, np.full(labels - 1, 0.7 / (labels - 1))])
    fold_of = rng.permutation(np.arange(rows) % folds)
    ids = np.array([f"train-{i}" for i in range(rows)])
    test_ids = np.array([f"test-{i}" for i in range(1000)])
    h = "a" * 64
    for r in range(runs):
        run = RunDir(root / "runs" / f"variant{r:02d}-backbone-s{r % 3 + 1}")
        z = rng.normal(size=(rows, labels)).astype(np.float32)
        z[np.arange(rows), y] += 2.0 + rng.uniform(0, 1.5)
        write_json_atomic(run.config_path, {"run": run.name, "config": {"folds": folds}, "label_names": list(names),
                                            "fold_map_hash": h})
        save_predictions(run.oof_path, Predictions(ids, names, z, h, y, fold_of))
        save_predictions(run.test_path, Predictions(test_ids, names, rng.normal(size=(1000, labels)).astype(np.float32), h))
        for f in range(folds):
            history = [{"epoch": e, "train_loss": 2.0 / e, "accuracy": 60 + 4 * e} for e in range(1, 6)]
            write_json_atomic(run.fold_dir(f) / "done.json", {"files": {}, "history": history, "best_epoch": 5,
                                                              "metrics": {}, "wall_seconds": 60.0})
        write_json_atomic(run.summary_path, {"folds": [{"wall_seconds": 60.0}] * folds})


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rows", type=int, default=9000)
    ap.add_argument("--labels", type=int, default=42)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_store(root, args.runs, args.rows, args.labels, args.folds)
        from ensemble.cli import main as ensemble_main

        assert ensemble_main(["blend", "--workdir", str(root), "--runs", "variant0*", "--method", "weighted",
                              "--format", "generic", "--out", str(root / "submissions" / "blend.csv")]) == 0
        t0 = time.perf_counter()
        status = main(["report", "--workdir", str(root)])
        seconds = time.perf_counter() - t0
        page = root / "report" / "report.html"
        text = page.read_text(encoding="utf-8")
        print(f"\nkfold report: {args.runs} runs x {args.rows} OOF rows x {args.labels} labels, {args.folds} folds: "
              f"{seconds:.1f} s (exit {status}); report.html {page.stat().st_size / 1e6:.1f} MB, "
              f"{text.count('<img ')} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
