"""A team's machines as one, simulated on this machine: Ray's own cluster test utility starts a head without CPUs
and two one-CPU worker nodes, each with its own scratch folder (TMPDIR); the product's `kfold run --cluster
ADDRESS` trains a SemEval run of 4 folds on them, and one node is removed a second after its second part starts
(mid-part, after it has completed one). Prints what happened and checks: the run completes, the completion records
name both nodes and an attempt 2, the nodes' scratch folders hold no run file and no file naming the workdir.

    python benchmarks/cluster_two_nodes.py --data ../shared/data/semeval2010_task8/train.tsv --rows 1000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_cpu import machine, subset  # noqa: E402  (shared by the CPU benchmarks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    from ray.cluster_utils import Cluster

    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="two-nodes-") as tmp:
        scratch = {name: Path(tmp) / f"node-{name}" for name in ("a", "b")}
        for path in scratch.values():
            path.mkdir()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        nodes = {name: cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(path)}) for name, path in scratch.items()}
        cluster.wait_for_nodes()
        try:
            data = subset(Path(args.data), args.rows, Path(tmp) / "data")
            work = Path(tmp) / "driver-workdir"
            cmd = [sys.executable, "-m", "kfold.cli", "run", "--data", str(data), "--workdir", str(work), "--folds", "4",
                   "--epochs", str(args.epochs), "--variants", "split", "--cluster", cluster.address,
                   "--cpus-per-fold", "1"]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1"})
            starts: dict[str, int] = {}
            removed: list[str] = []
            for line in proc.stdout:
                print(line, end="", flush=True)
                if ": started on cpu of " in line and not removed:
                    node_id = line.split(" of ")[1].split("/")[1].split(" ")[0]
                    starts[node_id] = starts.get(node_id, 0) + 1
                    if starts[node_id] == 2:
                        name, victim = next((n, v) for n, v in nodes.items() if v.node_id.startswith(node_id))
                        removed.append(name)
                        threading.Timer(1.0, cluster.remove_node, (victim, False)).start()
                        print(f"[benchmark] removing node {name} ({node_id}) in 1 s, mid-part", flush=True)
            status = proc.wait(timeout=1800)
            wall = time.perf_counter() - t0
            from kfold.core.store import RunDir

            run = RunDir(next((work / "runs").iterdir()))
            records = [run.fold_record(f) or {} for f in range(4)]
            left = [p for path in scratch.values() for p in path.rglob("*") if p.is_file()]
            run_files = [p for p in left if p.suffix in (".npz", ".pt", ".safetensors") or p.name == "done.json"]
            naming = [p for p in left if p.stat().st_size < 50_000_000 and str(work).encode() in p.read_bytes()]
            print(f"\nexit {status} in {wall:.1f} s; node removed: {removed or 'none'}")
            for f, r in enumerate(records):
                print(f"  fold {f}: node {r.get('node')}, device {r.get('device')}, attempt {r.get('attempt')}")
            print(f"nodes named by the records: {len({r.get('node') for r in records})}; files left in the nodes' "
                  f"scratch folders: {len(left)}, run files among them: {len(run_files)}, naming the workdir: "
                  f"{len(naming)}")
            ok = (status == 0 and removed and len({r.get('node') for r in records}) == 2
                  and max(r.get("attempt", 1) for r in records) >= 2 and not run_files and not naming)
            print("checks passed" if ok else "CHECKS FAILED")
            return 0 if ok else 1
        finally:
            cluster.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
