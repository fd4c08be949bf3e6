"""The Ray executor: folds and refits as Ray tasks, side by side on every device of a machine or a cluster. This is
the only module of the toolkit that imports Ray (``pip install 'rekfold[ray]'``).

Each part is one task in a fresh worker process (``max_calls=1``: GPU memory and torch threads start clean) that
asks for ``--cpus-per-fold`` CPUs and ``--gpus-per-fold`` GPUs; Ray sets ``CUDA_VISIBLE_DEVICES`` for a GPU task,
and the task blanks it itself when it has no GPU. The run's features travel once through the object store; the
task returns its logits and record. Ray's own task retries are off: the scheduler retries what the engine says
died (worker crash, node lost, out of host memory) and reports what the part raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import socket
import time
from typing import Callable, Iterator

import ray
from ray.util.queue import Empty, Queue

from kfold.core.config import Config
from kfold.core.errors import ConfigError

from ._executors import Event, slots_of
from ._parts import PartSpec, RunPayload, compute_part

#: What the engine raises when a part's process or node is gone (retried), as opposed to what the part raised.
DIED = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError,
        ray.exceptions.LocalRayletDiedError, ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)


@ray.remote(max_calls=1)
def _run_part(spec: PartSpec, payload: RunPayload, events, token: int, part_fn: Callable = compute_part):
    """One part in a Ray worker: its device from Ray, its threads from the spec; says when it starts.
    ``part_fn``: what computes the part (``compute_part``; tests pass a stand-in)."""
    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:  # recent Ray releases leave CUDA_VISIBLE_DEVICES alone for a task that asks for no GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    device = "gpu " + ",".join(str(int(g)) for g in gpu_ids) if gpu_ids else "cpu"
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    events.put((token, device, node))
    return part_fn(spec, payload, device_name=device, node=node)


def node_report(backbone: str) -> dict:
    """What a node has: versions of Python, torch, transformers and rekfold, and whether ``backbone`` is there
    (the packaged MiniLM, a local folder, or a model in its Hugging Face cache: nothing is downloaded)."""
    import importlib.metadata as md
    import platform

    from kfold.encoding import resolve_backbone

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "rekfold"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "absent"
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(resolve_backbone(backbone), local_files_only=True)
        present = True
    except Exception:  # noqa: BLE001 - any failure to find it locally means the part could not load it
        present = False
    return {"versions": versions, "backbone": present, "host": socket.gethostname()}


@ray.remote(num_cpus=0)
def _node_report(report: Callable, backbone: str) -> dict:
    return report(backbone)


def check_nodes(backbones: list[str], report: Callable = node_report, timeout: float = 120.0) -> list[str]:
    """Before any part is submitted: every alive node's versions and backbones against this machine's; returns the
    nodes checked, raises ConfigError with one line per mismatch."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    problems, mine, answered = [], {b: report(b) for b in backbones}, set()
    for backbone in backbones:
        refs = [_node_report.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(report, backbone) for n in nodes]
        answers = []
        for node, ref in zip(nodes, refs):
            try:
                answers.append((node, ray.get(ref, timeout=timeout)))
            except (ray.exceptions.TaskUnschedulableError, *DIED):  # a node that left the cluster since it was listed
                continue
            except ray.exceptions.GetTimeoutError:
                raise ConfigError(f"--cluster: node {node['NodeManagerAddress']} did not answer the version check "
                                  f"within {timeout:.0f} s") from None
        answered |= {node["NodeID"] for node, _ in answers}
        for node, theirs in answers:
            where = f"node {theirs['host']}/{node['NodeID'][:8]} ({node['NodeManagerAddress']})"
            for name, version in theirs["versions"].items():
                if version != mine[backbone]["versions"][name] and backbone == backbones[0]:
                    problems.append(f"{where}: {name} {version}, this machine has {mine[backbone]['versions'][name]}")
            if not theirs["backbone"]:
                problems.append(f"{where}: backbone '{backbone}' is not there (install it or put it in the node's "
                                "Hugging Face cache; nothing is downloaded)")
    if problems:
        raise ConfigError(f"{len(problems)} mismatch(es) between this machine and the cluster's nodes; nothing was "
                          "submitted:\n  " + "\n  ".join(problems))
    return [f"{n['NodeManagerAddress']}/{n['NodeID'][:8]}" for n in nodes if n["NodeID"] in answered]


def start_ray(address: str | None) -> bool:
    """Connect to the cluster at ``address``, or start a local runtime with this machine's cores and GPUs (no
    dashboard); returns whether this call started it (and so should shut it down). An initialised runtime (a test
    module's, a notebook's) is used as it is."""
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    try:
        ray.init(address=address, **options) if address else ray.init(**options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--cluster {address or 'local'}: cannot start or join Ray ({str(exc).splitlines()[0]})") from None
    return True


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray started (or joined) for the body, shut down after it when started here."""
    owned = start_ray(address)
    try:
        yield
    finally:
        if owned and ray.is_initialized():
            ray.shutdown()


def alive_nodes() -> list[dict]:
    """Resources of every alive node: ``{"CPU": n, "GPU": m, ...}``."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def part_resources(cfg: Config, nodes: list[dict]) -> tuple[float, int]:
    """(GPUs, CPUs) per part: ``--gpus-per-fold`` (auto: 1 where the cluster has GPUs, else 0) and
    ``--cpus-per-fold`` (auto: a GPU node's cores shared by its GPU parts; 1 core per part without GPUs)."""
    has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
    gpus = cfg.gpus_per_fold if cfg.gpus_per_fold >= 0 else (1.0 if has_gpu else 0.0)
    if cfg.cpus_per_fold:
        return gpus, cfg.cpus_per_fold
    if gpus:
        shares = [n.get("CPU", 0) / (n["GPU"] / gpus) for n in nodes if n.get("GPU", 0) >= gpus]
        return gpus, max(1, int(min(shares))) if shares else 1
    return gpus, 1


class RayExecutor:
    """Parts as Ray tasks (see the module docstring). ``address``: a cluster's HOST:PORT, or None for local."""

    def __init__(self, cfg: Config, address: str | None = None, *, log: Callable[[str], None] = print,
                 on_start: Callable[[object, str, str], None] | None = None, part_fn: Callable = compute_part,
                 node_report: Callable = node_report):
        self.log, self.part_fn, self.node_report = log, part_fn, node_report
        self.on_start = on_start or (lambda key, device, node: None)
        self._owned = start_ray(address)
        nodes = alive_nodes()
        self.gpus, self.cpus = part_resources(cfg, nodes)
        self.slots = slots_of(nodes, self.cpus, self.gpus, cfg.max_parallel)
        if not self.slots:  # a request no node can meet: refused now, never a wait
            have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes)
            self.close()
            raise ConfigError(f"--gpus-per-fold {self.gpus:g} --cpus-per-fold {self.cpus}: no node of the cluster has "
                              f"that much ({have}); lower them, or --cluster none")
        gpu = f" + {self.gpus:g} GPU" if self.gpus else ""
        self.description = (f"{self.slots} folds side by side on Ray ({address or 'local'}, {len(nodes)} node"
                            f"{'s' if len(nodes) != 1 else ''}), each {self.cpus} CPU{gpu}")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # start events from the workers, collected beside the driver (a lost node must not take them with it)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._events = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self._running: dict = {}  # object ref -> token
        self._keys: dict[int, object] = {}  # token -> the scheduler's key
        self._tokens = itertools.count()

    def with_part_fn(self, part_fn: Callable) -> "RayExecutor":
        """The same cluster and part resources, computing ``part_fn`` instead (the probe on every slot)."""
        other = RayExecutor.__new__(RayExecutor)
        other.__dict__.update(self.__dict__, part_fn=part_fn, _owned=False, _running={}, _keys={},
                              _tokens=itertools.count())
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        other._events = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        return other

    def check(self, backbones: list[str]) -> None:
        """The version and backbone check of every node (see :func:`check_nodes`), before any part is submitted."""
        nodes = check_nodes(sorted(set(backbones)), self.node_report)
        if len(nodes) > 1:
            self.log(f"cluster: {len(nodes)} nodes checked ({', '.join(nodes)}): same versions, backbones there")

    def put(self, payload: RunPayload):
        """The run's shared data, in the object store once."""
        return ray.put(payload)

    def submit(self, key: object, spec: PartSpec, payload) -> None:
        # a CPU part's torch threads are its CPU share (a GPU part keeps them for data handling)
        spec = dataclasses.replace(spec, cfg=spec.cfg.replace(threads=self.cpus))
        token = next(self._tokens)
        self._keys[token] = key
        ref = _run_part.options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0).remote(
            spec, payload, self._events, token, self.part_fn)
        self._running[ref] = token

    def _starts(self) -> None:
        try:
            for token, device, node in self._events.get_nowait_batch(self._events.qsize()):
                if token in self._keys:
                    self.on_start(self._keys[token], device, node)
        except Empty:
            pass

    def wait(self, timeout: float | None = None) -> list[Event]:
        """The parts that finished (or failed, or died); waits in one-second steps, at most ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ready: list = []
        while self._running:
            self._starts()
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=1.0)
            if ready or (deadline is not None and time.monotonic() >= deadline):
                break
        self._starts()
        events = []
        for ref in ready:
            key = self._keys.pop(self._running.pop(ref))
            try:
                events.append(Event(key, "done", result=ray.get(ref)))
            except ray.exceptions.RayTaskError as exc:  # raised inside the part: its own exception, reported
                events.append(Event(key, "error", error=getattr(exc, "cause", None) or exc))
            except DIED as exc:
                events.append(Event(key, "died", message=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"))
        return events

    def cancel(self) -> None:
        for ref in list(self._running):
            ray.cancel(ref, force=True)
        self._running.clear()

    def close(self) -> None:
        if getattr(self, "_running", None):
            self.cancel()
        if getattr(self, "_events", None) is not None:
            self._events.shutdown(force=True)
            self._events = None
        if self._owned and ray.is_initialized():
            ray.shutdown()
            self._owned = False
