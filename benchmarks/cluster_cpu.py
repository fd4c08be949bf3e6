"""Folds one at a time or side by side on a CPU machine: whole-run wall time of the product's own `kfold run` with
`--cluster none`, with `--cluster local` at 1 and 2 CPUs per fold (Ray's start-up and its worker processes
included), and with `--cluster auto` (its measurement of both arrangements included), on the first N rows of a data
file, for several N. Prints one line per run and a table; the machine (CPU model, cores, bf16 hardware) first.

    python benchmarks/cluster_cpu.py --data ../shared/data/semeval2010_task8/train.tsv --rows 500,2000,8000
    python benchmarks/cluster_cpu.py --data ../shared/data/klue_re_subset/train_subset.jsonl --rows 3247 \\
        --extra "--max-len 256"
    python benchmarks/cluster_cpu.py --overheads   # Ray's start-up and a fresh worker's start, in seconds

Each arm trains in its own fresh workdir, in its own process; arms take turns within each size, so a drift of the
machine's speed hits all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = {"none": ["--cluster", "none"], "local-1cpu": ["--cluster", "local", "--cpus-per-fold", "1"],
        "local-2cpu": ["--cluster", "local", "--cpus-per-fold", "2"], "auto": ["--cluster", "auto"]}


def overheads(repeats: int = 3) -> None:
    """What kfold.training._choose's RAY_START_SECONDS and WORKER_START_SECONDS stand for: ``ray.init`` of a local
    runtime, and a fresh worker process (``max_calls=1``, as every part gets) starting and importing the training
    code (torch, transformers) before a part could build its model. Median of ``repeats``."""
    import statistics

    import ray

    starts, workers = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        starts.append(time.perf_counter() - t0)

        @ray.remote(max_calls=1, num_cpus=1)
        def fresh() -> float:
            t = time.perf_counter()
            from kfold.training import compute_part  # noqa: F401  torch, transformers and the training loop

            return time.perf_counter() - t

        t1 = time.perf_counter()
        ray.get(fresh.remote())
        workers.append(time.perf_counter() - t1)
        ray.shutdown()
    print(f"ray.init (local runtime): {statistics.median(starts):.1f} s; a fresh worker started and the training code "
          f"imported: {statistics.median(workers):.1f} s (median of {repeats})")


def machine() -> str:
    """``AMD EPYC (family 25 model 17), 2 cores, bf16 in hardware: yes``."""
    model, family, number = platform.processor() or "?", "?", "?"
    try:
        info = Path("/proc/cpuinfo").read_text()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model, family, number = fields.get("model name", model), fields.get("cpu family", "?"), fields.get("model", "?")
        bf16 = "amx_tile" in info or "avx512_bf16" in info
    except OSError:
        bf16 = False
    return f"{model} (family {family} model {number}), {os.cpu_count()} cores, bf16 in hardware: {'yes' if bf16 else 'no'}"


def parse_with_extra(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``ap``'s arguments, and in ``.extra`` what follows ``--`` (flags for the product's command, passed on)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]
    return args


def write_results(path: str, title: str, data: str, commands: list[str], rows: list[dict], note: str = "") -> None:
    """A benchmark's figures as JSON for the docs' generated tables (``docs/generate.py``), with the machine."""
    out = {"title": title, "note": note, "machine": machine(), "commands": commands, "data": data,
           "measured": time.strftime("%Y-%m-%d"), "rows": rows}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def print_and_write(args: argparse.Namespace, commands: list[str], rows: list[dict]) -> int:
    """Print each row as a JSON line and, with ``--json``, write the results file (the title, data and note from
    ``args``); the benchmark's exit status."""
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.json:
        write_results(args.json, args.title, args.data, commands, rows, args.note)
    return 0


def subset(data: Path, rows: int, folder: Path) -> Path:
    """The first ``rows`` data lines of a line-per-row file (SemEval, JSONL, TSV), with its label file beside."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [line for line in data.read_text(encoding="utf-8").splitlines(True) if line.strip()]
    out = folder / data.name
    out.write_text("".join(lines[:rows]), encoding="utf-8")
    for name in ("label.txt", "relation_list.json", "label_type.pkl"):
        if (data.parent / name).exists():
            shutil.copy(data.parent / name, folder / name)
    return out


def timed_command(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run one arm's command offline, in its own process; its wall seconds. A failure prints the output's tail."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
    return proc, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--overheads", action="store_true", help="time Ray's start-up and a fresh worker's, then stop")
    ap.add_argument("--rows", default="8000", help="comma-separated sizes (first N rows)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--extra", default="", help="more `kfold run` flags, e.g. '--max-len 256'")
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    if args.overheads:
        overheads()
        return 0
    if not args.data:
        ap.error("--data is required (or --overheads)")
    results: dict[tuple[int, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="cluster-cpu-") as tmp:
        for rows in [int(r) for r in args.rows.split(",")]:
            data = subset(Path(args.data), rows, Path(tmp) / f"data-{rows}")
            for arm in args.arms.split(","):
                work = Path(tmp) / f"w-{rows}-{arm}"
                cmd = [sys.executable, "-m", "kfold.cli", "run", "--data", str(data), "--workdir", str(work), "--folds",
                       str(args.folds), "--epochs", str(args.epochs), "--variants", "split", *ARMS[arm],
                       *shlex.split(args.extra)]
                proc, wall = timed_command(cmd)
                if proc.returncode != 0:
                    return proc.returncode
                results[(rows, arm)] = wall
                oof = next((line for line in proc.stdout.splitlines() if ": OOF " in line), "")
                print(f"{rows} rows, {arm}: {wall:.1f} s  {oof.split(' -> ')[0]}", flush=True)
                for line in proc.stdout.splitlines():  # what --cluster auto chose, and why
                    if line.startswith("--cluster auto:"):
                        print(f"  {line}", flush=True)
    print(f"\n{'rows':>6} " + " ".join(f"{arm:>16}" for arm in args.arms.split(",")) + "   (wall s, and x of none)")
    for rows in sorted({r for r, _ in results}):
        base = results.get((rows, "none"))
        cells = [f"{results[(rows, a)]:7.1f}" + (f" ({base / results[(rows, a)]:.2f}x)" if base else "")
                 for a in args.arms.split(",")]
        print(f"{rows:>6} " + " ".join(f"{c:>16}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
