"""The Ray executor: folds and refits as Ray tasks, side by side on every device of a machine or a cluster. This is
the only module of the toolkit that imports Ray (``pip install 'rekfold[ray]'``).

Each part is one task in a fresh worker process (``max_calls=1``: GPU memory and torch threads start clean) that
asks for its CPUs and GPUs; Ray sets ``CUDA_VISIBLE_DEVICES`` for a GPU task, and the task blanks it itself when it
has no GPU (a CPU part trains on the CPU, never on a GPU or MPS). The run's features travel once through the object
store; the task returns its logits and record, and its log lines reach the driver as they are written. Ray's own
task retries are off: the scheduler retries what the engine says died (worker crash, node lost, out of host memory)
and reports what the part raised, with the part's own (remote) traceback.

Which runtime: ``local`` starts one of this process's own (never a ``ray start`` cluster on the machine, never
``RAY_ADDRESS``), ``HOST:PORT`` joins exactly that cluster, :data:`RUNNING` uses the runtime this process already
has (a notebook's, a test module's). A runtime this process started counts as its own, and is shut down on every
path. A watchdog notices when the runtime itself is lost (this machine's raylet, the cluster's head): ``wait``
then raises :class:`kfold.core.errors.RuntimeLost` instead of leaving Ray's log as the last word.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
import re
import socket
import sys
import threading
import time
import traceback
from typing import Callable, Iterator

import ray
from ray.util.queue import Empty, Queue

from kfold.core.config import Config
from kfold.core.errors import ConfigError, RuntimeLost

from ._parts import PartSpec, RunPayload, compute_part, pretrain_part
from ._resources import Event, available_cores, device_label, slots_of, threads_per_part

#: What the engine raises when a part's process or node is gone (retried), as opposed to what the part raised.
DIED = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError,
        ray.exceptions.LocalRayletDiedError, ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)
#: The Python API's mode "use the Ray runtime this process already has" (``RayExecutor(cfg, RUNNING)``).
RUNNING = "running"
#: Seconds between the watchdog's checks of the runtime.
WATCH_SECONDS = 0.5
#: The cluster's head unreachable this many checks in a row: lost (a single missed connection is not).
HEAD_MISSES = 6


@ray.remote(max_calls=1)
def _run_part(spec: PartSpec, payload: RunPayload, events, token: int, part_fn: Callable = compute_part):
    """One part in a Ray worker: its device from Ray, its threads from the spec; says when it starts and sends
    its log lines to the driver. ``part_fn``: what computes the part (``compute_part``; tests pass a stand-in)."""
    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:  # recent Ray releases leave CUDA_VISIBLE_DEVICES alone for a task that asks for no GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    device = device_label(gpu_ids)
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    events.put(("start", token, device, node))
    kwargs = {"device_name": device, "node": node}
    if part_fn in (compute_part, pretrain_part):  # the parts that send their lines as they write them
        kwargs["log"] = lambda line: events.put(("log", token, line))
    # what the part writes to stderr (a warning, a library's message) reaches the driver's output and the run's
    # log.txt too, prefixed, as Ray's own log_to_driver (off: it would print every worker's setup) would not
    stderr = sys.stderr
    sys.stderr = _Lines(lambda line: events.put(("log", token, f"{spec.run} {spec.name} stderr: {line}")))
    try:
        return part_fn(spec, payload, **kwargs)
    finally:
        sys.stderr.flush_rest()
        sys.stderr = stderr


class _Lines(io.TextIOBase):
    """A text stream that hands each complete, non-blank line to ``send`` (a failing send loses the line only)."""

    def __init__(self, send: Callable[[str], None]):
        self.send, self.rest = send, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.rest += text
        *lines, self.rest = self.rest.replace("\r", "\n").split("\n")
        for line in lines:
            if line.strip():
                with contextlib.suppress(Exception):
                    self.send(line.rstrip())
        return len(text)

    def flush_rest(self) -> None:
        if self.rest.strip():
            self.write("\n")


def node_report(backbone: str) -> dict:
    """What a node has: versions of Python, torch, transformers and rekfold, whether ``backbone`` is there (the
    packaged MiniLM, a local folder, or a model in its Hugging Face cache: nothing is downloaded) and, for a folder
    the toolkit built or pretrained, its content hash (the same path may hold other weights on another node)."""
    import importlib.metadata as md
    import platform

    from kfold.encoding import built_backbone_hash, resolve_backbone

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
    digest = built_backbone_hash(backbone) if present else None
    return {"versions": versions, "backbone": present, "backbone_hash": digest, "host": socket.gethostname()}


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
            elif theirs.get("backbone_hash") != mine[backbone].get("backbone_hash"):
                problems.append(f"{where}: backbone '{backbone}' holds other weights (content hash "
                                f"{str(theirs.get('backbone_hash'))[:12]}, this machine's {str(mine[backbone].get('backbone_hash'))[:12]}; "
                                "copy this machine's folder there)")
    if problems:
        raise ConfigError(f"{len(problems)} mismatch(es) between this machine and the cluster's nodes; nothing was "
                          "submitted:\n  " + "\n  ".join(problems))
    return [f"{n['NodeManagerAddress']}/{n['NodeID'][:8]}" for n in nodes if n["NodeID"] in answered]


#: The runtime this process started: what was asked for ("local" or HOST:PORT) and what ``ray.init`` answered.
_OWN: dict = {}


def _flag(address: str) -> str:
    return f"--cluster {address}" if address != RUNNING else "the running Ray runtime"


def start_ray(address: str, init: Callable = ray.init) -> bool:
    """Start or join the runtime ``address`` names; returns whether this call started it (and so must shut it down).

    ``local``: a runtime of this process's own with the cores it may use (``address="local"``: never the cluster
    in ``RAY_ADDRESS`` nor a ``ray start`` cluster on the machine). ``HOST:PORT``: exactly that cluster.
    :data:`RUNNING`: the runtime this process already has. With a runtime already initialised, only the same one is
    used: one this process started for the same request, or the one ``HOST:PORT`` names; anything else is refused
    in one line. A start that fails leaves no runtime behind. ``init``: ``ray.init`` (replaceable for tests).
    """
    if ray.is_initialized():
        if address == RUNNING:
            return False
        if _OWN and _OWN.get("asked") == address:
            return False  # this process started it for the same request (shared by several executors)
        current = ray.get_runtime_context().gcs_address
        if address not in ("local", RUNNING) and _same_address(address, current):
            return False
        raise ConfigError(f"{_flag(address)}: this process already has a Ray runtime (at {current}) that is not the "
                          "one asked for; shut it down (ray.shutdown()), or ask for that one "
                          f"(--cluster {current})")
    if address == RUNNING:
        raise ConfigError("the running Ray runtime: this process has none (ray.init() first, or --cluster local)")
    options = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if address == "local":
        options.update(address="local", num_cpus=available_cores())
    else:
        options.update(address=address)
    try:
        context = init(**options)
    except BaseException as exc:  # noqa: BLE001 - Ray raises many types here; each is the same one-line refusal
        if ray.is_initialized():  # a start that failed (or was interrupted) half-way: nothing of it stays up
            ray.shutdown()
        if not isinstance(exc, Exception):  # Ctrl-C during the start: shut down above, then interrupted
            raise
        raise ConfigError(f"{_flag(address)}: cannot start or join Ray ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    _OWN.clear()
    _OWN.update(asked=address, info=dict(getattr(context, "address_info", {}) or {}))
    return True


def stop_ray() -> None:
    """Shut down the runtime this process started (a no-op when there is none)."""
    _OWN.clear()
    if ray.is_initialized():
        ray.shutdown()


def _same_address(asked: str, current: str) -> bool:
    """HOST:PORT against the runtime's GCS address (host names resolved)."""
    def norm(a: str) -> tuple[str, str]:
        host, _, port = a.rpartition(":")
        try:
            host = socket.gethostbyname(host)
        except OSError:
            pass
        return host, port

    return norm(asked) == norm(current)


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Ray started (or joined) for the body, shut down after it when started here."""
    owned = start_ray(address)
    try:
        yield
    finally:
        if owned:
            stop_ray()


def alive_nodes() -> list[dict]:
    """Resources of every alive node: ``{"CPU": n, "GPU": m, ...}``."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def part_resources(cfg: Config, nodes: list[dict], side_by_side: int = 0) -> tuple[float, int]:
    """(GPUs, CPUs) per part: ``--gpus-per-fold`` (auto: 1 where the cluster has GPUs, else 0) and
    ``--cpus-per-fold`` (auto: a GPU node's cores shared by its GPU parts; without GPUs, a node's cores shared by
    the parts that will run side by side, ``side_by_side``, 0 = as many as there are cores)."""
    has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
    gpus = cfg.gpus_per_fold if cfg.gpus_per_fold >= 0 else (1.0 if has_gpu else 0.0)
    if cfg.cpus_per_fold:
        return gpus, cfg.cpus_per_fold
    if gpus:
        shares = [n.get("CPU", 0) / (n["GPU"] / gpus) for n in nodes if n.get("GPU", 0) >= gpus]
        return gpus, max(1, int(min(shares))) if shares else 1
    largest = int(max((n.get("CPU", 0) for n in nodes), default=1))
    return gpus, threads_per_part(largest, side_by_side or largest)


def cpu_part(spec: PartSpec, cpus: int) -> PartSpec:
    """A CPU part's spec: ``cpus`` torch threads, and the CPU as its device (never a GPU or MPS it was not given)."""
    return dataclasses.replace(spec, cfg=spec.cfg.replace(threads=cpus, device="cpu"))


def _lost_node(message: str) -> str | None:
    """The node id a NodeDiedError names, or None."""
    found = re.search(r"node ID: ([0-9a-f]+)", message)
    return found.group(1) if found else None


class RayExecutor:
    """Parts as Ray tasks (see the module docstring). ``address``: ``local``, a cluster's HOST:PORT, or
    :data:`RUNNING`. ``side_by_side``: how many parts the caller will have at once (CPU parts share the cores among
    them; 0 = one core each)."""

    def __init__(self, cfg: Config, address: str = RUNNING, *, log: Callable[[str], None] = print,
                 on_start: Callable[[object, str, str], None] | None = None, part_fn: Callable = compute_part,
                 node_report: Callable = node_report, side_by_side: int = 0):
        self.log, self.part_fn, self.node_report = log, part_fn, node_report
        self.on_start = on_start or (lambda key, device, node: None)
        self.on_log: Callable[[object, str], None] = lambda key, line: self.log(line)
        self._running: dict = {}  # object ref -> token
        self._keys: dict[int, object] = {}  # token -> the scheduler's key
        self._tokens = itertools.count()
        self._events = None
        self._health = {"lost": ""}  # set by the watchdog; shared with the executors with_part_fn makes
        self._watch_stop = threading.Event()
        self.address = address
        self._owned = start_ray(address)
        try:
            self._setup(cfg, address, side_by_side)
        except BaseException:
            self.close()  # a runtime started here never outlives a failed start
            raise

    def _setup(self, cfg: Config, address: str, side_by_side: int) -> None:
        nodes = alive_nodes()
        self.gpus, self.cpus = part_resources(cfg, nodes, side_by_side)
        self.node_cpus = int(max((n.get("CPU", 0) for n in nodes), default=1))
        # a part alone may take every core only where the cores were left to the toolkit (not --cpus-per-fold N,
        # nor the one-slot executors of tuning's trials, which share one runtime)
        self.may_take_all = cfg.cpus_per_fold == 0
        self.slots = slots_of(nodes, self.cpus, self.gpus, cfg.max_parallel)
        if not self.slots:  # a request no node can meet: refused now, never a wait
            have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes)
            raise ConfigError(f"--gpus-per-fold {self.gpus:g} --cpus-per-fold {self.cpus}: no node of the cluster has "
                              f"that much ({have}); lower them, or --cluster none")
        gpu = f" + {self.gpus:g} GPU" if self.gpus else ""
        where = "local" if address in ("local", RUNNING) else address
        self.description = (f"{self.slots} folds side by side on Ray ({where}, {len(nodes)} node"
                            f"{'s' if len(nodes) != 1 else ''}), each {self.cpus} CPU{gpu}")
        self._node_id = ray.get_runtime_context().get_node_id()
        self._make_queue()
        # what the watchdog watches is read here, not in its thread: a Ray call there (get_runtime_context is one)
        # made after close() has shut the runtime down would start a new one (Ray's auto-init)
        raylet = _raylet_pid(_OWN.get("info", {}).get("raylet_socket_name", "")) if self._owned else None
        self._watch = threading.Thread(target=self._watchdog, args=(raylet, ray.get_runtime_context().gcs_address),
                                       daemon=True, name="ray-watchdog")
        self._watch.start()

    def _make_queue(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # start events and log lines from the workers, collected beside the driver (a lost node must not take
        # them with it)
        here = NodeAffinitySchedulingStrategy(self._node_id, soft=False)
        self._events = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})

    def with_part_fn(self, part_fn: Callable) -> "RayExecutor":
        """The same cluster and part resources, computing ``part_fn`` instead (the probe on every slot)."""
        other = RayExecutor.__new__(RayExecutor)
        other.__dict__.update(self.__dict__, part_fn=part_fn, _owned=False, _running={}, _keys={},
                              _tokens=itertools.count(), _watch_stop=threading.Event())
        other._make_queue()
        return other

    # -- the runtime's health ------------------------------------------------------------------------------------
    def _watchdog(self, raylet: int | None, head: str) -> None:
        """Every WATCH_SECONDS: this machine's raylet ``raylet`` alive (the local node; None: not ours to watch), the
        head ``head`` reachable (the cluster). Makes no Ray call (it may run after the runtime is shut down)."""
        misses = 0
        while not self._watch_stop.wait(WATCH_SECONDS):
            if raylet is not None and not _alive(raylet):
                self._health["lost"] = f"this machine's Ray node stopped (its raylet, pid {raylet}, is gone)"
                return
            misses = 0 if _reachable(head) else misses + 1
            if misses >= HEAD_MISSES:
                self._health["lost"] = f"the cluster's head ({head}) cannot be reached"
                return

    @property
    def _lost(self) -> str:
        return self._health["lost"]

    def _check_lost(self) -> None:
        if self._lost:
            raise RuntimeLost(f"the Ray runtime was lost: {self._lost}")

    # -- the executor interface ----------------------------------------------------------------------------------
    def check(self, backbones: list[str]) -> None:
        """The version and backbone check of every node (see :func:`check_nodes`), before any part is submitted."""
        nodes = check_nodes(sorted(set(backbones)), self.node_report)
        if len(nodes) > 1:
            self.log(f"cluster: {len(nodes)} nodes checked ({', '.join(nodes)}): same versions, backbones there")

    def put(self, payload: RunPayload):
        """The run's shared data, in the object store once."""
        self._check_lost()
        return ray.put(payload)

    def submit(self, key: object, spec: PartSpec, payload, *, alone: bool = False) -> None:
        """Submit a part. A CPU part's torch threads are its CPU share; ``alone`` (no other part will run beside
        it: a run's last part) asks for every core of a node, where ``--cpus-per-fold`` is 0. A GPU part packed on a share of one GPU may fill only
        that share of its memory."""
        self._check_lost()
        cpus = self.cpus
        if self.gpus:
            spec = dataclasses.replace(spec, gpu_share=self.gpus if self.gpus < 1 else 0.0)
        else:
            cpus = self.node_cpus if alone and self.may_take_all else self.cpus
            spec = cpu_part(spec, cpus)
        token = next(self._tokens)
        self._keys[token] = key
        ref = _run_part.options(num_cpus=cpus, num_gpus=self.gpus, max_retries=0).remote(
            spec, payload, self._events, token, self.part_fn)
        self._running[ref] = token

    def _drain(self) -> None:
        """Start events and log lines the workers sent, handed to ``on_start`` / ``on_log``."""
        try:
            items = self._events.get_nowait_batch(self._events.qsize())
        except Empty:
            return
        for item in items:
            kind, token = item[0], item[1]
            if token not in self._keys:
                continue
            if kind == "start":
                self.on_start(self._keys[token], item[2], item[3])
            else:
                self.on_log(self._keys[token], item[2])

    def wait(self, timeout: float | None = None) -> list[Event]:
        """The parts that finished (or failed, or died); waits in one-second steps, at most ``timeout`` seconds.
        Raises RuntimeLost when the runtime itself is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ready: list = []
        try:
            while self._running:
                self._check_lost()
                self._drain()
                ready, _ = ray.wait(list(self._running), num_returns=1, timeout=1.0)
                if ready or (deadline is not None and time.monotonic() >= deadline):
                    break
            self._drain()
        except RuntimeLost:
            raise
        except (ray.exceptions.RaySystemError, ConnectionError) as exc:
            self._health["lost"] = f"{type(exc).__name__}: {_first_line(exc)}"  # close() asks nothing of it now
            raise RuntimeLost(f"the Ray runtime was lost: {self._lost}") from None
        events = []
        for ref in ready:
            key = self._keys.pop(self._running.pop(ref))
            try:
                events.append(Event(key, "done", result=ray.get(ref)))
            except ray.exceptions.RayTaskError as exc:  # raised inside the part: its own exception, reported
                events.append(Event(key, "error", error=getattr(exc, "cause", None) or exc,
                                    traceback=_ANSI.sub("", str(exc))))  # the worker's own traceback
            except DIED as exc:
                node = _lost_node(str(exc))
                if node == self._node_id:  # this machine's node: the driver's own objects are gone with it
                    self._health["lost"] = f"this machine's Ray node stopped (Ray reported {type(exc).__name__})"
                    break  # the events already taken are handed back; the next wait() raises RuntimeLost
                events.append(Event(key, "died", message=f"{type(exc).__name__}: {_first_line(exc)[:160]}"))
            except ray.exceptions.RayError as exc:  # the engine refused or failed the part (object store full,
                # out of disk, a system error): that part fails, the others go on
                events.append(Event(key, "error", error=exc, message=f"{type(exc).__name__}: {_first_line(exc)}",
                                    traceback=traceback.format_exc()))
        if not events:
            self._check_lost()
        return events  # results already fetched are handed back even when the runtime is lost meanwhile

    def cancel(self) -> None:
        if self._lost:  # nothing to cancel on a runtime that is gone (and asking it could hang)
            self._running.clear()
            return
        for ref in list(self._running):
            ray.cancel(ref, force=True)
        self._running.clear()

    def release(self) -> bool:
        """Close this executor but leave its runtime up; returns whether it had started that runtime (the caller
        now shuts it down, see :func:`stop_ray`)."""
        owned, self._owned = self._owned, False
        self.close()
        return owned

    def close(self) -> None:
        """Cancel what runs, stop the log channel, and shut down a runtime this executor started: the last also
        when cancelling fails."""
        self._watch_stop.set()
        try:
            if self._running:
                self.cancel()
            if self._events is not None and not self._lost:
                with contextlib.suppress(Exception):  # an actor on a lost node cannot be asked to stop
                    self._events.shutdown(force=True)
        finally:
            self._events = None
            if self._owned:
                self._owned = False
                stop_ray()


#: Ray colours the worker's name in a task's traceback; the run's log.txt keeps plain text.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _raylet_pid(socket_name: str) -> int | None:
    """The process of this machine's raylet (the one serving ``socket_name``), found by its command line; None
    where there is no /proc (macOS) or it is not found."""
    if not socket_name or not os.path.isdir("/proc"):
        return None
    wanted = f"--raylet_socket_name={socket_name}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if wanted in fh.read().split(b"\0"):
                        return int(entry)
            except OSError:
                continue
    return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a killed child of this process stays a zombie until reaped: that is not running)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _reachable(address: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to HOST:PORT opens."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False
