"""Which Ray runtime the toolkit uses, and a runtime lost mid-run. No module-wide runtime here: each test starts
(and stops) what it needs. `--cluster local` always starts a runtime of its own (never RAY_ADDRESS's, never a
`ray start` cluster on the machine), an initialised runtime that is not the one asked for is refused, a failed start
leaves nothing up; a raylet killed while folds train ends `kfold run` with one line of ours."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'rekfold[ray]')")

from kfold.core.config import Config  # noqa: E402
from kfold.core.errors import ConfigError  # noqa: E402
from kfold.training import make_executor  # noqa: E402
from kfold.training._ray import RayExecutor, start_ray, stop_ray  # noqa: E402

pytestmark = pytest.mark.timeout(180)  # every wait bounded: a hang fails the test (pytest-timeout)
CPU = Config(gpus_per_fold=0.0, cpus_per_fold=1)
LOCAL = CPU.replace(cluster="local")


@pytest.fixture(autouse=True)
def no_runtime_left():
    assert not ray.is_initialized()
    yield
    if ray.is_initialized():  # a failing test must not leave its runtime to the next one
        ray.shutdown()
        pytest.fail("a Ray runtime was left running")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_starts_its_own_runtime_whatever_ray_address_says(monkeypatch):
    dead = f"127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("RAY_ADDRESS", dead)
    executor = make_executor(LOCAL, log=lambda m: None)  # what `--cluster local` does
    try:
        assert ray.get_runtime_context().gcs_address != dead and executor.slots >= 1
    finally:
        executor.close()
    assert not ray.is_initialized()  # the runtime it started is shut down with it


def test_local_never_joins_a_ray_start_cluster_on_the_machine(monkeypatch):
    import shutil
    import tempfile

    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    # RAY_TMPDIR for both sides: `ray start` records its address in <RAY_TMPDIR>/ray/ray_current_cluster, where a
    # ray.init() without an address in this process would find and join it
    monkeypatch.setenv("RAY_TMPDIR", temp)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
                             capture_output=True, text=True, timeout=120, env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        executor = make_executor(LOCAL, log=lambda m: None)  # what `--cluster local` does
        try:
            assert not ray.get_runtime_context().gcs_address.endswith(f":{port}")
        finally:
            executor.close()
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_watchdog_that_first_runs_after_close_starts_no_runtime(monkeypatch):
    # the flake this pins: the watchdog thread asked Ray for the head's address when it first ran; run after close()
    # had shut the runtime down, that call (get_runtime_context, one of Ray's auto-init APIs) started a new one.
    # Here the thread is held back until after close(), every time.
    import threading
    import types

    from kfold.training import _ray

    held = []

    class HeldThread:
        def __init__(self, target, args=(), **kwargs):
            held.append((target, args))

        def start(self):
            pass

    monkeypatch.setattr(_ray, "threading", types.SimpleNamespace(Thread=HeldThread, Event=threading.Event))
    executor = RayExecutor(CPU, "local")
    executor.close()
    assert not ray.is_initialized() and len(held) == 1
    target, args = held[0]
    target(*args)  # the watchdog's first run, after the close: stops at once, asking Ray nothing
    assert not ray.is_initialized()


def test_an_initialised_runtime_that_is_not_the_one_asked_for_is_refused():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)  # a notebook's
    try:
        mine = ray.get_runtime_context().gcs_address
        with pytest.raises(ConfigError, match=r"^--cluster local: this process already has a Ray runtime \(at "):
            RayExecutor(CPU, "local")
        with pytest.raises(ConfigError, match=r"^--cluster 10\.0\.0\.1:6379: this process already has a Ray runtime"):
            RayExecutor(CPU, "10.0.0.1:6379")
        executor = RayExecutor(CPU, mine)  # the one it is: used, not owned
        executor.close()
        assert ray.is_initialized()
        executor = RayExecutor(CPU)  # the Python API's "the runtime already running"
        executor.close()
        assert ray.is_initialized()
    finally:
        ray.shutdown()


def test_a_failed_start_leaves_no_runtime_up():
    def half_way(**options):
        ray.init(**options)
        raise RuntimeError("the dashboard agent failed to start")

    with pytest.raises(ConfigError, match=r"--cluster local: cannot start or join Ray \(the dashboard agent failed"):
        start_ray("local", init=half_way)
    assert not ray.is_initialized()
    with pytest.raises(ConfigError, match="no node of the cluster has that much"):
        RayExecutor(Config(gpus_per_fold=3.0), "local")  # started, then refused: shut down again
    assert not ray.is_initialized()
    stop_ray()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive_in_session(sid: int) -> list[int]:
    """Processes (not zombies) of the session ``sid``: what a command started with start_new_session left."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return out


def _raylet_of(pid: int) -> int | None:
    for child in _descendants(pid):
        try:
            if b"/raylet/raylet" in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]:
                return child
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_a_runtime_lost_mid_run_ends_with_one_line_of_ours_and_the_same_command_resumes(tmp_path, demo_dir,
                                                                                         tiny_bert):
    # item 11: the raylet of `kfold run --cluster local` is killed while two folds train
    cmd = [sys.executable, "-m", "kfold.cli", "run", "--workdir", str(tmp_path), "--backbone", tiny_bert, "--data",
           str(demo_dir / "train.tsv"), "--folds", "3", "--epochs", "30", "--batch-size", "16", "--lr", "0.001",
           "--precision", "fp32", "--cluster", "local", "--cpus-per-fold", "1", "--gpus-per-fold", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while out.read_text().count(": started on cpu") < 2:
            assert time.monotonic() < deadline and proc.poll() is None, out.read_text()[-3000:]
            time.sleep(0.1)
        raylet = _raylet_of(proc.pid)
        assert raylet is not None
        os.kill(raylet, signal.SIGKILL)
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    assert code == 2, lines[-20:]
    last = lines[-1]
    assert last.startswith("kfold: error: the Ray runtime was lost: this machine's Ray node stopped"), lines[-20:]
    assert "not complete; the same command resumes (it trains only the missing parts)" in last
    time.sleep(2)
    assert not _alive_in_session(proc.pid)  # the runtime it started (GCS, workers) went with it
    from kfold.training import run_kfold

    again = run_kfold(Config(backbone=tiny_bert, data=str(demo_dir / "train.tsv"), folds=3, epochs=30, batch_size=16,
                             lr=1e-3, precision="fp32", cluster="none"), tmp_path, log=lambda m: None)
    assert again.complete and len(again.trained) + len(again.skipped) == 3
