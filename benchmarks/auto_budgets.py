"""`kfold auto` at several budgets: what each made, its honest OOF score, the test score, and the wall time.

Drives the product's own command (a subprocess per budget, each in a fresh workdir), then reads the manifest
that `kfold auto` writes beside the leaderboard file. On SemEval-2010 Task 8 (train on all 8000, predict the
2717 test sentences, official macro-F1):

    python benchmarks/auto_budgets.py --budgets 10m,30m,90m --workdir /work/bench/auto \\
        --data ../shared/data/semeval2010_task8/train.tsv --test ../shared/data/semeval2010_task8/test.tsv

Any other `kfold auto` flag goes after `--` (e.g. `-- --folds 5 --marker typed_entity_marker_punct`).
Name the CPU (model, cores, bf16 in hardware or not) with every figure this prints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_cpu import parse_with_extra, write_results  # noqa: E402  (shared by the CPU benchmarks)


def run_budget(budget: str, workdir: Path, data: str, test: str, extra: list[str]) -> dict:
    """One fresh `kfold auto` call; returns its figures from the manifest and the wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "kfold.cli", "auto", "--budget", budget, "--workdir", str(workdir), "--data", data]
    argv += (["--test", test] if test else []) + extra
    t0 = time.perf_counter()
    with open(workdir / "auto.log", "w", encoding="utf-8") as log:
        status = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    wall = time.perf_counter() - t0
    row = {"budget": budget, "status": status, "wall_minutes": round(wall / 60, 2)}
    manifests = sorted((workdir / "submissions").glob("*.manifest.json"))
    if manifests:
        m = json.loads(manifests[0].read_text(encoding="utf-8"))
        row.update(method=m["method"], members=m["members"], honest=round(m["honest_oof_score"], 2), metric=m["metric"],
                   best_member=round(max(m["member_oof_scores"].values()), 2),
                   test=m.get("test_scores_from_labelled_test_file", {}))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="10m,30m,90m")
    ap.add_argument("--workdir", required=True, help="one fresh folder per budget is made under it")
    ap.add_argument("--data", required=True)
    ap.add_argument("--test", default="")
    ap.add_argument("--json", default="", help="write the rows here (the docs' tables are generated from it)")
    ap.add_argument("--title", default="", help="the table's title in the docs")
    args = parse_with_extra(ap, argv)  # more `kfold auto` flags after --
    rows = []
    for budget in args.budgets.split(","):
        folder = Path(args.workdir) / f"budget-{budget}"
        if folder.exists() and any(folder.iterdir()):
            raise SystemExit(f"{folder}: exists and is not empty; each budget needs a fresh workdir")
        rows.append(run_budget(budget, folder, args.data, args.test, args.extra))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        write_results(args.json, args.title, args.data,
                      [f"kfold auto --data {args.data}" + (f" --test {args.test}" if args.test else "")
                       + f" --budget {r['budget']} " + " ".join(args.extra) for r in rows], rows)
    print(f"\n{'budget':>7} {'wall min':>8} {'runs':>4} {'method':>8} {'honest OOF':>10} {'best run':>8} {'test':>7}")
    for r in rows:
        metric = r.get("metric", "")
        print(f"{r['budget']:>7} {r['wall_minutes']:>8.2f} {len(r.get('members', [])):>4} {r.get('method', '-'):>8} "
              f"{r.get('honest', float('nan')):>10.2f} {r.get('best_member', float('nan')):>8.2f} "
              f"{r.get('test', {}).get(metric, float('nan')):>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
