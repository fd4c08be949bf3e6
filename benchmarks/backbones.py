"""Packaged backbones against each other on one data file, through the product's own commands; writes the figures
as JSON (``--json``) for the docs' generated tables (``python docs/generate.py``).

``run``: one ``kfold run --backbones A,B`` (same folds, epochs and variant for every backbone), then each run's
honest OOF scores from its ``summary.json``, train rows/s and fold wall time from its folds' completion records and
tokens per row (median) from its ``data.json``:

    python benchmarks/backbones.py run --data ../shared/data/klue_re_subset/train_subset.jsonl \\
        --workdir /tmp/bench/klue --json benchmarks/results/klue-backbones.json \\
        -- --folds 2 --variants split --epochs 2 --average-epochs 1 --max-len 256 --cluster none

``auto``: one ``kfold auto --budget B --backbone X`` per backbone, each in ``WORKDIR/X`` with its log in
``WORKDIR/X/auto.log``; the figures come from that log (probe, runs trained, the chosen blend's honest score). A
backbone whose log already ends with a chosen blend is read, not run again.

The run's flags after ``--`` are passed on unchanged. Name the CPU with every figure: the JSON records it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_cpu import parse_with_extra, print_and_write  # noqa: E402  (shared by the CPU benchmarks)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _kfold(args: list[str], log: Path | None = None) -> float:
    """One product command; returns its wall seconds (its output to ``log``, or this terminal)."""
    argv = [sys.executable, "-m", "kfold.cli", *args]
    print("$ kfold " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    if log is None:
        status = subprocess.run(argv, env=ENV).returncode
    else:
        with open(log, "w", encoding="utf-8") as out:
            status = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=ENV).returncode
    if status:
        raise SystemExit(f"kfold {args[0]} exited with {status}" + (f"; see {log}" if log else ""))
    return time.perf_counter() - t0


def run_rows(workdir: Path, backbones: list[str]) -> list[dict]:
    """Each backbone's run in the store: honest OOF scores, speed and tokens per row."""
    rows = []
    for backbone in backbones:
        found = [p for p in sorted((workdir / "runs").glob("*")) if json.loads((p / "config.json").read_text())
                 ["config"]["backbone"] == backbone and (p / "summary.json").exists()]
        if len(found) != 1:
            raise SystemExit(f"{workdir}: expected one complete run of backbone {backbone}, found {len(found)}")
        run = found[0]
        summary = json.loads((run / "summary.json").read_text())
        records = [json.loads(p.read_text()) for p in sorted(run.glob("fold*/done.json"))]
        lengths = json.loads((run / "data.json").read_text())["token_lengths"]
        rows.append({"backbone": backbone, "run": run.name, **{k: round(v, 2) for k, v in summary["oof"].items()},
                     "train_rows_per_s": round(statistics.mean(r["train_examples_per_s"] for r in records), 1),
                     "fold_wall_s": round(statistics.mean(r["wall_seconds"] for r in records)),
                     "tokens_per_row": int(statistics.median(lengths))})
    return rows


def auto_row(log: Path, backbone: str) -> dict:
    """The figures of one ``kfold auto`` log."""
    text = log.read_text(encoding="utf-8")
    blend = re.search(r"chosen blend: (\w+), honest OOF ([\w-]+) ([\d.]+) \(best run alone ([\d.]+)\)", text)
    probe = re.search(r"probe: ([\d.]+) training rows/s", text)
    if blend is None:
        raise SystemExit(f"{log}: no chosen blend (did the command finish?)")
    trained = re.findall(r"^run \d+ of \d+: (\S+)", text, re.M)
    wall = re.search(r"^wall seconds: ([\d.]+)$", text, re.M)
    runs = [json.loads(p.read_text())["oof"] for name in trained
            for p in [log.parent / "runs" / name / "summary.json"] if p.exists()]
    best = max(runs, key=lambda oof: oof.get("micro_f1", oof["accuracy"]), default={})
    return {"best_run_oof": {k: round(v, 2) for k, v in best.items()}, "backbone": backbone,
            "method": blend.group(1), "metric": blend.group(2), "honest": float(blend.group(3)), "best_run": float(blend.group(4)), "runs": len(trained),
            "trained": trained, "probe_rows_per_s": float(probe.group(1)) if probe else None,
            "wall_min": round(float(wall.group(1)) / 60, 1) if wall else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("run", "auto"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbones", default="minilm,me5-small")
    ap.add_argument("--budget", default="30m", help="auto: the budget of each call")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--json", default="", help="write the figures here (the docs' tables are generated from it)")
    ap.add_argument("--title", default="", help="the table's title in the docs")
    ap.add_argument("--note", default="", help="what else to know about this measurement (shown under the table)")
    args = parse_with_extra(ap, argv)  # the product command's own flags after --
    workdir, backbones = Path(args.workdir), args.backbones.split(",")
    if args.mode == "run":
        command = ["run", "--data", args.data, "--backbones", args.backbones, "--workdir", str(workdir), *args.extra]
        _kfold(command)  # resumable: a complete run trains nothing again
        rows, commands = run_rows(workdir, backbones), ["kfold " + " ".join(command)]
    else:
        rows, commands = [], []
        for backbone in backbones:
            folder = workdir / backbone
            folder.mkdir(parents=True, exist_ok=True)
            command = ["auto", "--data", args.data, "--budget", args.budget, "--backbone", backbone, "--workdir",
                       str(folder), *args.extra]
            commands.append("kfold " + " ".join(command))
            log = folder / "auto.log"
            if not (log.exists() and "chosen blend:" in log.read_text(encoding="utf-8")):
                seconds = _kfold(command, log)
                with open(log, "a", encoding="utf-8") as out:
                    out.write(f"wall seconds: {seconds:.1f}\n")
            rows.append(auto_row(log, backbone))
    return print_and_write(args, commands, rows)


if __name__ == "__main__":
    raise SystemExit(main())
