"""What the scheduler and every executor share, at the bottom of the training package: the events an executor
reports, the executor interface, and the resource rules (the cores this process may use, the parts that fit on a
cluster's nodes, device labels). Torch-free and Ray-free.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

#: Ray versions the distributed executor is tested with (pyproject's ``ray`` extra pins the same range).
RAY_VERSIONS = ">=2.60,<2.61"


@dataclass(frozen=True)
class Speed:
    """This machine on this data: training and prediction rows per second of one part (one slot's while every slot
    is busy), seconds to build a model (what the planner of ``kfold auto`` plans with). ``alone_train_rows_per_s``:
    a part that has every core to itself (a run's refit after its folds on a CPU machine's slots; 0 = the same as
    ``train_rows_per_s``)."""

    train_rows_per_s: float
    predict_rows_per_s: float
    load_seconds: float
    alone_train_rows_per_s: float = 0.0

    @property
    def alone(self) -> float:
        """Training rows per second of a part alone on the machine."""
        return self.alone_train_rows_per_s or self.train_rows_per_s


class EpochLine(str):
    """An epoch's log line that also carries its numbers (``entry``: the epoch's ``history`` record), so the driver
    can send them to the trackers as the line arrives (over the worker-log channel, from a Ray worker too), before
    the part ends. Everywhere else it is the plain line."""

    entry: dict


def epoch_line(text: str, entry: dict) -> EpochLine:
    """``text`` carrying ``entry`` (see :class:`EpochLine`)."""
    line = EpochLine(text)
    line.entry = dict(entry)
    return line


@dataclass
class Event:
    """What happened to a submitted part: ``done`` (with its result), ``error`` (raised inside it, or an engine
    error that is not a lost worker) or ``died`` (its worker or node was lost; ``message`` says how).
    ``traceback``: the part's own traceback as text (a remote one included), for the failure report."""

    key: object
    kind: str
    result: object | None = None  # PartResult
    error: BaseException | None = None
    message: str = ""
    traceback: str = ""


class Executor(Protocol):
    """Where parts are computed (``kfold.training._inprocess``, ``kfold.training._ray``). It never writes the run
    store; ``wait`` raises :class:`kfold.core.errors.RuntimeLost` when the engine itself is gone."""

    slots: int
    description: str
    on_start: Callable[[object, str, str], None]  # (key, device, node): a part began
    on_log: Callable[[object, str], None]  # (key, line): a line a part wrote, as it writes it

    def check(self, backbones: list[str]) -> None: ...
    def put(self, payload) -> object: ...
    def submit(self, key: object, spec, payload, *, alone: bool = False) -> None: ...
    def wait(self, timeout: float | None = None) -> list[Event]: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


def slots_of(nodes: list[dict], cpus: float, gpus: float, max_parallel: int = 0) -> int:
    """Parts that fit side by side on nodes of ``{"CPU": n, "GPU": m}``, each part taking ``cpus`` and ``gpus``.

    >>> slots_of([{"CPU": 16, "GPU": 2}, {"CPU": 8, "GPU": 0}], cpus=4, gpus=0.5)
    4
    """
    total = 0
    for node in nodes:
        fits = [math.floor(node.get("CPU", 0) / cpus + 1e-9) if cpus else math.inf,
                math.floor(node.get("GPU", 0) / gpus + 1e-9) if gpus else math.inf]
        total += int(min(fits)) if min(fits) != math.inf else 0
    return min(total, max_parallel) if max_parallel else total


def available_cores(affinity: set[int] | None = None, cgroup_root: str | Path = "/sys/fs/cgroup",
                    proc_cgroup: str | Path = "/proc/self/cgroup") -> int:
    """The cores this process may use: its CPU affinity mask, lowered by a cgroup CPU quota (a container's
    ``--cpus``), rounded up; at least 1. ``os.cpu_count()`` counts the machine's cores and ignores both.

    ``affinity`` (default: this process's), ``cgroup_root`` and ``proc_cgroup`` are replaceable for tests.

    >>> available_cores(affinity={0, 1, 2, 3}, cgroup_root="/nonexistent")
    4
    """
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # macOS has no affinity masks
            affinity = set(range(os.cpu_count() or 1))
    cores = max(1, len(affinity))
    quota = cgroup_quota(Path(cgroup_root), Path(proc_cgroup))
    return max(1, min(cores, math.ceil(quota - 1e-9))) if quota else cores


def cgroup_quota(root: Path, proc_cgroup: Path) -> float | None:
    """CPUs allowed by the tightest cgroup quota over this process's cgroup and its parents (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when there is none or it cannot be read."""
    paths = _cgroup_paths(proc_cgroup)
    best = None
    for rel in paths:
        parts = [p for p in rel.strip("/").split("/") if p]
        for depth in range(len(parts), -1, -1):
            rel_parts = parts[:depth]
            # v2: <root>/<path>/cpu.max; v1: <root>/<controller>/<path>/cpu.cfs_quota_us (or the controller mounted
            # at the root itself)
            here = root.joinpath(*rel_parts)
            for quota in (_v2_quota(here), _v1_quota(here), _v1_quota(root.joinpath("cpu", *rel_parts)),
                          _v1_quota(root.joinpath("cpu,cpuacct", *rel_parts))):
                if quota:
                    best = quota if best is None else min(best, quota)
    return best


def _cgroup_paths(proc_cgroup: Path) -> list[str]:
    """This process's cgroup paths (``/`` when the file cannot be read)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return ["/"]
    out = [line.split(":", 2)[2] for line in lines if line.count(":") >= 2]
    return out or ["/"]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def threads_per_part(cores: int, side_by_side: int) -> int:
    """Torch threads of each CPU part: the cores shared by the parts that run side by side (at least 1).

    >>> threads_per_part(32, 5), threads_per_part(2, 3), threads_per_part(2, 1)
    (6, 1, 2)
    """
    return max(1, cores // max(1, min(cores, side_by_side)))


def device_label(gpu_ids: list) -> str:
    """``gpu 0,1`` from the ids the engine gives (integers, or UUID strings of GPUs and MIG slices), ``cpu``
    without any.

    >>> device_label([]), device_label([0, 1]), device_label(["GPU-5b0c"])
    ('cpu', 'gpu 0,1', 'gpu GPU-5b0c')
    """
    return "gpu " + ",".join(str(g) for g in gpu_ids) if gpu_ids else "cpu"
