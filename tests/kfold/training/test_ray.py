"""Folds as parts on Ray, on this machine: one small runtime for the module (2 CPUs, 2 logical GPUs, no dashboard),
every wait bounded. Devices per part, a SIGKILLed worker's part retried, --retries 0, a killed driver, a request
the cluster can never meet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'rekfold[ray]')")

from kfold.core.config import Config  # noqa: E402
from kfold.core.errors import ConfigError, TrainingError  # noqa: E402
from kfold.core.store import load_predictions  # noqa: E402
from kfold.training import PartResult, PartSpec, run_kfold  # noqa: E402
from kfold.training._ray import RayExecutor  # noqa: E402

pytestmark = pytest.mark.timeout(150)  # every wait bounded: a hang fails the test (pytest-timeout)


@pytest.fixture(scope="module", autouse=True)
def runtime():
    from . import scripted

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stand-in parts below travel by value
    ray.cloudpickle.register_pickle_by_value(scripted)
    # address="local": a runtime of this module's own, even where another one left /tmp/ray/ray_current_cluster behind
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _stand_in(spec, payload, device_name="", node=""):
    """A part that only records where and when it ran."""
    start = time.time()
    time.sleep(float(payload))
    return PartResult(None, None, {"device": device_name, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                   "start": start, "end": time.time(), "pid": os.getpid()})


def _spec(i):
    return PartSpec(Config(), f"r{i}", i, ("a", "b"), 0, 10)


def _run_all(executor, n, seconds):
    handle = executor.put(seconds)
    for i in range(n):
        executor.submit(i, _spec(i), handle)
    records, deadline = {}, time.monotonic() + 60
    while len(records) < n:
        assert time.monotonic() < deadline, "parts did not finish within 60 s"
        for event in executor.wait(timeout=5):
            assert event.kind == "done", event
            records[event.key] = event.result.record
    executor.close()
    return [records[i] for i in range(n)]


def _overlapping(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_logical_gpus_one_part_per_id_half_packs_two_cpu_parts_see_no_gpu():
    records = _run_all(RayExecutor(Config(gpus_per_fold=1.0, cpus_per_fold=0), part_fn=_stand_in), 4, 1.0)
    assert sorted(r["visible"] for r in records) == ["0", "0", "1", "1"]
    assert {r["device"] for r in records} == {"gpu 0", "gpu 1"}
    for i, a in enumerate(records):  # never one id twice at the same time; two at once on ids 0 and 1
        for b in records[i + 1:]:
            if a["visible"] == b["visible"]:
                assert not _overlapping(a, b)
    assert any(_overlapping(a, b) for a in records for b in records if a["visible"] != b["visible"])
    half = _run_all(RayExecutor(Config(gpus_per_fold=0.5, cpus_per_fold=0, max_parallel=2), part_fn=_stand_in), 2, 1.5)
    assert half[0]["visible"] == half[1]["visible"] and _overlapping(*half)  # packed on one GPU
    cpu = _run_all(RayExecutor(Config(gpus_per_fold=0.0, cpus_per_fold=1), part_fn=_stand_in), 2, 0.2)
    assert [r["visible"] for r in cpu] == ["", ""] and [r["device"] for r in cpu] == ["cpu", "cpu"]


def test_a_request_the_cluster_can_never_meet_is_refused_at_once():
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"--gpus-per-fold 3 --cpus-per-fold 1: no node of the cluster has that much"):
        RayExecutor(Config(gpus_per_fold=3.0))
    with pytest.raises(ConfigError, match="no node of the cluster has that much"):
        RayExecutor(Config(gpus_per_fold=0.0, cpus_per_fold=4))
    assert time.monotonic() - t0 < 10


def _cfg(demo_dir, backbone, **over):
    base = dict(backbone=backbone, data=str(demo_dir / "train.tsv"), test=str(demo_dir / "test.tsv"), folds=3,
                epochs=12, batch_size=16, lr=1e-3, precision="fp32", threads=1)
    base.update(over)
    return Config(**base)


def _kill_one_part_worker(after: float = 1.5, deadline: float = 60.0) -> threading.Thread:
    """In the background: wait until a worker runs a part for ``after`` seconds, then SIGKILL it."""
    killed = []

    def watch():
        end = time.monotonic() + deadline
        seen: dict[int, float] = {}
        while time.monotonic() < end and not killed:
            for pid in _part_workers():
                seen.setdefault(pid, time.monotonic())
                if time.monotonic() - seen[pid] >= after:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.killed = killed
    thread.start()
    return thread


def _part_workers() -> list[int]:
    """PIDs of Ray workers running a part (Ray names a worker's process after the task it runs)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::_run_part"):
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


def test_a_sigkilled_worker_is_retried_and_the_oof_equals_the_sequential_run(tmp_path, demo_dir, tiny_bert):
    sequential = run_kfold(_cfg(demo_dir, tiny_bert, cluster="none"), tmp_path / "seq", log=lambda m: None)
    logs: list[str] = []
    killer = _kill_one_part_worker()
    cfg = _cfg(demo_dir, tiny_bert, cpus_per_fold=1, gpus_per_fold=0.0)
    out = run_kfold(cfg, tmp_path / "ray", log=logs.append, executor=RayExecutor(cfg))
    killer.join(timeout=5)
    assert killer.killed, "no part worker was killed"
    assert out.complete and sorted(out.trained) == [0, 1, 2]
    assert any("its worker died" in line and "attempt 2" in line for line in logs), logs
    attempts = [out.run.fold_record(f)["attempt"] for f in range(3)]
    assert sorted(attempts) == [1, 1, 2] and {out.run.fold_record(f)["device"] for f in range(3)} == {"cpu"}
    assert len(list(out.run.root.glob("fold*/done.json"))) == 3
    a, b = load_predictions(sequential.run.oof_path), load_predictions(out.run.oof_path)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.logits, b.logits)


def test_with_no_retries_the_dead_part_is_reported_the_rest_finish_and_the_rerun_trains_it(tmp_path, demo_dir, tiny_bert):
    cfg = _cfg(demo_dir, tiny_bert, cpus_per_fold=1, gpus_per_fold=0.0, retries=0)
    killer = _kill_one_part_worker()
    logs: list[str] = []
    with pytest.raises(TrainingError, match=r"fold \d: its worker died 1 time\(s\) \(.*\); given up \(--retries\)"):
        run_kfold(cfg, tmp_path, log=logs.append, executor=RayExecutor(cfg))
    killer.join(timeout=5)
    run = next((tmp_path / "runs").iterdir())
    done = sorted(int(p.parent.name[4:]) for p in run.glob("fold*/done.json"))
    assert len(done) == 2 and any("given up (--retries)" in line for line in logs), logs
    again = run_kfold(cfg.replace(cluster="none"), tmp_path, log=lambda m: None)
    assert again.trained == sorted(set(range(3)) - set(done)) and sorted(again.skipped) == done and again.complete


def test_a_killed_driver_resumes_with_only_the_missing_parts(tmp_path, demo_dir, tiny_bert):
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "kfold.cli", "run", "--workdir", str(tmp_path), "--backbone", tiny_bert, "--data",
           str(demo_dir / "train.tsv"), "--folds", "3", "--epochs", "12", "--batch-size", "16", "--lr", "0.001",
           "--precision", "fp32", "--cluster", address, "--cpus-per-fold", "1", "--gpus-per-fold", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob("runs/*/fold*/done.json")):
            assert time.monotonic() < deadline and proc.poll() is None, "no part finished in 90 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    run = next((tmp_path / "runs").iterdir())
    done = sorted(int(p.parent.name[4:]) for p in run.glob("fold*/done.json"))
    assert 1 <= len(done) < 3 and not (run / "oof.npz").exists()
    again = run_kfold(_cfg(demo_dir, tiny_bert, test="", cluster="none"), tmp_path, log=lambda m: None)
    assert sorted(again.skipped) == done and sorted(again.trained) == sorted(set(range(3)) - set(done))
    assert again.complete


def test_tuning_runs_two_trials_at_once_and_a_killed_worker_does_not_stop_the_study(tmp_path, demo_dir, tiny_bert):
    from tuning import StudySettings, load_space, open_study, search

    base = _cfg(demo_dir, tiny_bert, test="", folds=2, epochs=12, cpus_per_fold=1, gpus_per_fold=0.0,
                cluster=ray.get_runtime_context().gcs_address)  # the module's runtime, asked for by its address
    settings = StudySettings(study="two", workdir=str(tmp_path), sampler_seed=0, pruner="none")
    logs: list[str] = []
    killer = _kill_one_part_worker(after=1.0)
    done = search(base, settings, load_space(None), n_trials=4, log=logs.append)
    killer.join(timeout=5)
    assert killer.killed and done == {"COMPLETE": 4, "PRUNED": 0, "FAIL": 0}, logs
    assert "2 trials side by side, one per slot; this process keeps the study and decides pruning" in logs
    trials = open_study(settings, create=False).get_trials()
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])  # side by side
    records = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/fold*/done.json")]
    assert len(records) == 8 and max(r["attempt"] for r in records) == 2  # the killed part was retried


def test_auto_dry_run_probes_every_slot_at_once_and_prints_the_slots(tmp_path, demo_dir, tiny_bert, capsys):
    from kfold.cli import main

    address = ray.get_runtime_context().gcs_address
    argv = ["auto", "--data", str(demo_dir / "train.tsv"), "--test", str(demo_dir / "test.tsv"), "--budget", "20m",
            "--workdir", str(tmp_path), "--backbone", tiny_bert, "--cluster", address, "--cpus-per-fold", "1",
            "--gpus-per-fold", "0", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(per slot, all 2 busy)" in out
    assert f"2 folds side by side on Ray ({address}, 1 node), each 1 CPU):" in out and "on 2 slot(s)" in out


def _raises(spec, payload, device_name="", node=""):
    """A part that raises inside its worker, after a warning on stderr."""
    def deep():
        raise ValueError(f"bad rows in part {spec.part}")

    print(f"UserWarning: part {spec.part} has odd rows", file=sys.stderr)
    deep()


def test_a_part_that_raises_reports_its_own_remote_traceback(tmp_path):
    # item 6: the worker's traceback reaches the driver's output and the run's log; the other run goes on
    from kfold.training import run_jobs

    from .scripted import fake_job

    a = fake_job(tmp_path, "a")
    ex = RayExecutor(Config(gpus_per_fold=0.0, cpus_per_fold=1), part_fn=_raises)
    lines: list[str] = []
    try:
        with pytest.raises(TrainingError, match=r"2 parts failed \(a fold \d: ValueError: bad rows in part \d; "):
            run_jobs([a], ex, lines.append)  # both folds ran side by side and both raised
    finally:
        ex.close()
    text = "\n".join(lines)
    assert "failed: a fold 0: ValueError: bad rows in part 0" in text and "failed: a fold 1: ValueError" in text
    assert "ray::_run_part()" in text and "in deep" in text and "in _raises" in text and "\x1b" not in text, text
    assert "in deep" in a.run.log_path.read_text()
    # what the worker wrote to stderr came too, prefixed by its run and part
    assert "a fold 0 stderr: UserWarning: part 0 has odd rows" in text
    assert "a fold 1 stderr: UserWarning: part 1 has odd rows" in a.run.log_path.read_text()


def test_auto_on_a_cluster_checks_the_nodes_before_it_probes(tmp_path, demo_dir, tiny_bert):
    # item 8: a node without the backbone is the one-line refusal, before any probe part runs
    from kfold.auto import AutoSettings, run_auto

    def no_backbone(backbone):
        from kfold.training._ray import node_report

        report = node_report(backbone)
        report["backbone"] = False
        return report

    cfg = _cfg(demo_dir, tiny_bert, cpus_per_fold=1, gpus_per_fold=0.0)
    executor = RayExecutor(cfg, node_report=no_backbone)
    probed = []
    settings = AutoSettings(base=cfg, budget=600, fmt="pstage2", workdir=str(tmp_path))
    try:
        with pytest.raises(ConfigError, match=r"mismatch.*nothing was submitted:\n  node .*backbone '.*' is not there"):
            run_auto(settings, executor=executor, probe=lambda c: probed.append(c), log=lambda m: None)
    finally:
        executor.close()
    assert not probed


def test_parts_on_ray_send_the_trackers_the_same_keys_as_in_process(tmp_path, demo_dir, tiny_bert):
    # the driver logs what each part's result brings back, wherever the part ran
    from kfold.tracking import Trackers
    from tests.kfold.tracking.test_trackers import Recorder

    keys = []
    for where in ("none", "ray"):
        recorder = Recorder()
        cfg = _cfg(demo_dir, tiny_bert, epochs=2, average_epochs=1, cpus_per_fold=1, gpus_per_fold=0.0,
                   cluster="none")
        with Trackers((), tmp_path / where, log=lambda m: None, backends=[recorder]) as trackers:
            run_kfold(cfg, tmp_path / where, log=lambda m: None, trackers=trackers,
                      executor=RayExecutor(cfg) if where == "ray" else None)
        keys.append(recorder.keys())
    assert keys[0] == keys[1] and keys[0]["fold2/train_loss"] == [1, 2] and "oof/accuracy" in keys[0]


def test_a_node_whose_pretrained_folder_holds_other_weights_is_refused_before_anything_is_submitted(tmp_path, demo_dir,
                                                                                                 tiny_bert):
    # a `kfold pretrain` folder at the same path on a node, pretrained again (or another way) on this machine: the
    # parts would train other weights than the run's identity says; refused with the node's line, nothing submitted
    from kfold.training import PretrainSettings, pretrain
    from kfold.training._ray import check_nodes, node_report

    folder = pretrain(Config(data=str(demo_dir / "train.tsv"), backbone=tiny_bert, max_len=64, precision="fp32"),
                      tmp_path / "tapt", PretrainSettings(epochs=1, batch_size=64), log=lambda m: None)
    assert node_report(str(folder))["backbone_hash"]  # this machine's folder has a hash to compare

    driver = os.getpid()

    def older_folder_on_the_node(backbone):
        report = node_report(backbone)
        if os.getpid() != driver:  # answered on the node, not on this machine
            report["backbone_hash"] = "0" * 64
        return report

    with pytest.raises(ConfigError, match=r"1 mismatch.*nothing was submitted:\n  node .*backbone '.*' holds other "
                                          r"weights \(content hash 000000000000, this machine's [0-9a-f]{12};"):
        check_nodes([str(folder)], report=older_folder_on_the_node)
    assert check_nodes([str(folder)])  # the same folder everywhere: no problem


@pytest.mark.timeout(300)  # a fresh worker per epoch imports torch and transformers: ~20 s each on 2 busy cores
def test_pretrain_on_the_cluster_runs_each_epoch_as_a_part_and_ends_where_the_in_process_run_does(tmp_path, demo_dir,
                                                                                                  tiny_bert):
    from safetensors.torch import load_file

    from kfold.encoding import BUILD_RECORD
    from kfold.training import PretrainSettings, pretrain, pretrain_part, run_pretrain

    cfg = Config(data=str(demo_dir / "train.tsv"), backbone=tiny_bert, max_len=64, precision="fp32", threads=1,
                 gpus_per_fold=0.0, cpus_per_fold=1)
    settings = PretrainSettings(epochs=2, lr=1e-3, batch_size=32)
    lines = []
    executor = RayExecutor(cfg, part_fn=pretrain_part)  # one-core slots: the same threads as in-process here
    on_ray = run_pretrain(cfg, tmp_path / "ray", settings, log=lines.append, executor=executor)
    here = pretrain(cfg, tmp_path / "here", settings, log=lambda m: None)
    epochs = json.loads((on_ray / BUILD_RECORD).read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(e["node"] and e["device"] == "cpu" for e in epochs)
    assert any(line.startswith("pretrain epoch 1/2: MLM loss") and " on " in line for line in lines)
    a, b = load_file(on_ray / "model.safetensors"), load_file(here / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert executor._events is None and ray.is_initialized()  # closed; the module's runtime (not its own) stays up
