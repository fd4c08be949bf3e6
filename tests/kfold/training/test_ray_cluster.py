"""A team's machines as one, simulated with Ray's own cluster test utility: a head without CPUs and two one-CPU
nodes, each with its own scratch folder. Only the driver's workdir holds files, no path of the driver reaches a
worker, a node lost mid-part has its part retried on the other, a node with other versions is refused before
anything is submitted."""

from __future__ import annotations

import pickle
import sys
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'rekfold[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

from kfold.core.config import Config  # noqa: E402
from kfold.core.errors import ConfigError  # noqa: E402
from kfold.core.store import load_predictions  # noqa: E402
from kfold.training import run_kfold  # noqa: E402
from kfold.training._ray import RayExecutor, node_report  # noqa: E402

pytestmark = pytest.mark.timeout(150)  # every wait bounded: a hang fails the test (pytest-timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    scratch = {name: tmp_path_factory.mktemp(f"node-{name}") for name in ("a", "b")}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = {name: c.add_node(num_cpus=1, env_vars={"TMPDIR": str(path), "REKFOLD_TEST_NODE": name})
             for name, path in scratch.items()}
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    c.wait_for_nodes()
    yield c, nodes, scratch
    ray.shutdown()
    c.shutdown()


class _Watched(RayExecutor):
    """Records the bytes of everything sent to the workers."""

    sent: list[bytes] = []

    def put(self, payload):
        _Watched.sent.append(pickle.dumps(payload))
        return super().put(payload)

    def submit(self, key, spec, payload, **kw):
        _Watched.sent.append(pickle.dumps(spec))
        super().submit(key, spec, payload, **kw)


def _cfg(demo_dir, backbone, **over):
    base = dict(backbone=backbone, data=str(demo_dir / "train.tsv"), test=str(demo_dir / "test.tsv"), folds=4,
                epochs=12, batch_size=16, lr=1e-3, precision="fp32", gpus_per_fold=0.0, cpus_per_fold=1, threads=1)
    base.update(over)
    return Config(**base)


def test_losing_a_node_mid_part_retries_it_on_the_other_and_only_the_driver_writes(cluster, tmp_path, demo_dir,
                                                                                   tiny_bert):
    c, nodes, scratch = cluster
    workdir = tmp_path / "work"
    starts: dict[str, int] = {}
    removed: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if ": started on cpu of " not in line or removed:
            return
        node_id = line.split(" of ")[1].split("/")[1].split(" ")[0]
        starts[node_id] = starts.get(node_id, 0) + 1
        if starts[node_id] == 2:  # the node's second part: after it has completed one, lose it mid-part
            victim = next(n for n in nodes.values() if n.node_id.startswith(node_id))
            removed.append(node_id)
            threading.Timer(1.0, c.remove_node, (victim, False)).start()

    lines: list[str] = []
    cfg = _cfg(demo_dir, tiny_bert, cluster=c.address)
    out = run_kfold(cfg, workdir, log=log, executor=_Watched(cfg, c.address))
    assert removed and out.complete, lines
    records = [out.run.fold_record(f) for f in range(4)]
    assert len({r["node"] for r in records}) == 2  # the completion records name both nodes
    assert sorted(r["attempt"] for r in records)[-1] == 2 and any("its worker died" in x for x in lines), lines
    assert all(str(workdir).encode() not in sent for sent in _Watched.sent)  # the workdir never reaches a worker
    for path in scratch.values():  # nothing of the run is written on the nodes
        assert not [p for p in path.rglob("*") if p.suffix in (".npz", ".json", ".pt")]
    sequential = run_kfold(cfg.replace(cluster="none"), tmp_path / "seq", log=lambda m: None)
    assert np.array_equal(load_predictions(sequential.run.oof_path).logits, load_predictions(out.run.oof_path).logits)


def _other_version_on_the_nodes(backbone):
    """The head reports this machine's versions; a worker node (the first test may have removed one) another
    rekfold."""
    import os

    report = node_report(backbone)
    if os.environ.get("REKFOLD_TEST_NODE"):
        report["versions"]["rekfold"] = "0.0.1"
    return report


def test_a_node_with_another_rekfold_version_is_refused_before_anything_is_submitted(cluster, tmp_path, demo_dir,
                                                                                     tiny_bert):
    c, _, _ = cluster
    cfg = _cfg(demo_dir, tiny_bert, cluster=c.address)
    executor = RayExecutor(cfg, c.address, node_report=_other_version_on_the_nodes)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"\d mismatch.*nothing was submitted:\n  node .*: rekfold 0\.0\.1, this machine "
                                          r"has"):
        run_kfold(cfg, tmp_path, log=lambda m: None, executor=executor)
    assert time.monotonic() - t0 < 60
    assert not list(tmp_path.glob("runs/*/fold*/done.json"))
