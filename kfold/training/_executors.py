"""Executors: where the parts of runs are computed. The in-process executor (one slot, today's sequential path) and
the Ray executor (``kfold.training._ray``, the only module that imports Ray) share this interface, and every
command goes through it, so the sequential path is the distributed path with one slot.

An executor takes parts (``submit``), computes them, and reports what happened to each (``wait``): done with its
result, an error raised inside the part (reported, never retried: the same error would come again), or a worker
or node that died (the scheduler retries the part). It never writes the run store.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator

from kfold.core.config import Config
from kfold.core.errors import ConfigError

from ._parts import PartResult, PartSpec, RunPayload, compute_part

#: Ray versions the distributed executor is tested with (pyproject's ``ray`` extra pins the same range).
RAY_VERSIONS = ">=2.60,<2.61"
#: ``--cluster auto`` on a machine without GPUs starts a local Ray runtime, one core per fold, when a run holds at
#: least this many training-row epochs per core (rows x epochs x (folds - 1) / folds / cores). Measured with
#: benchmarks/cluster_cpu.py (SemEval, MiniLM, 4 folds, 1 epoch; AMD EPYC Zen 4, 2 cores, bf16): 1000 rows (375 per
#: core) took 0.78x the speed of one fold at a time, 3000 rows (1125) 1.17x, 8000 rows (3000) 1.10x: below the
#: smallest measured win, Ray's start-up and a fresh worker process per part cost more than folds side by side save.
#: On an Intel Xeon with AMX (2 cores, bf16) the same runs took 0.99x at 3000 rows and 1.13x at 8000: at this
#: threshold that machine breaks even (0.99x), the Zen 4 one gains 1.17x.
CPU_ROWS_PER_CORE = 1125


@dataclass
class Event:
    """What happened to a submitted part: ``done`` (with its result), ``error`` (raised inside it) or ``died``
    (its worker or node was lost; ``message`` says how)."""

    key: object
    kind: str
    result: PartResult | None = None
    error: BaseException | None = None
    message: str = ""


class InProcessExecutor:
    """Computes one part at a time in this process (live epoch lines, ``model_factory`` for tests)."""

    slots = 1
    description = "one fold at a time in this process"

    def __init__(self, log: Callable[[str], None] = print, model_factory: Callable | None = None,
                 on_start: Callable[[object, str, str], None] | None = None):
        self.log, self.model_factory = log, model_factory
        self.on_start = on_start or (lambda key, device, node: None)
        self._queue: list[tuple[object, PartSpec, RunPayload]] = []

    def check(self, backbones: list[str]) -> None:
        """Nothing to check: parts train with this process's libraries."""

    def put(self, payload: RunPayload) -> RunPayload:
        return payload

    def submit(self, key: object, spec: PartSpec, payload: RunPayload) -> None:
        self._queue.append((key, spec, payload))

    def wait(self, timeout: float | None = None) -> list[Event]:
        """Compute the next submitted part here and now."""
        from ._train import pick_device

        if not self._queue:
            return []
        key, spec, payload = self._queue.pop(0)
        device = pick_device(spec.cfg.device).type
        self.on_start(key, device, "")
        try:
            result = compute_part(spec, payload, device_name=device, log=self.log, model_factory=self.model_factory)
        except Exception as exc:  # raised inside the part: reported by the scheduler, never retried
            return [Event(key, "error", error=exc)]
        return [Event(key, "done", result=result)]

    def cancel(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        self.cancel()


def gpu_count() -> int:
    """CUDA devices torch sees on this machine."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ray_installed() -> bool:
    """Whether the ``ray`` extra is installed (looked up, not imported: importing Ray takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def resolve_cluster(cfg: Config, n_rows: int = 0, *, cores: int | None = None, gpus: int | None = None,
                    ray_ok: bool | None = None, env: dict | None = None) -> tuple[str, str]:
    """Where parts train: ``("none", note)``, ``("local", note)`` or ``("HOST:PORT", note)``; ``note`` is a line
    saying why when ``--cluster auto`` chose (or could not choose) Ray, else "".

    ``auto``: the cluster in ``RAY_ADDRESS`` when it is set; with more than one GPU, a local runtime when Ray is
    installed (else none, saying what ``rekfold[ray]`` would give); without GPUs, local when the run is large for
    the cores (:data:`CPU_ROWS_PER_CORE`, measured) and Ray is installed, else none.
    """
    env = os.environ if env is None else env
    if cfg.cluster != "auto":
        return cfg.cluster, ""
    if env.get("RAY_ADDRESS"):
        return env["RAY_ADDRESS"], f"--cluster auto: joining the Ray cluster in RAY_ADDRESS ({env['RAY_ADDRESS']})"
    cores = (os.cpu_count() or 1) if cores is None else cores
    gpus = gpu_count() if gpus is None else gpus
    ray_ok = ray_installed() if ray_ok is None else ray_ok
    if gpus > 1:
        if ray_ok:
            return "local", f"--cluster auto: {gpus} GPUs, so folds train side by side on a local Ray runtime"
        return "none", (f"note: this machine has {gpus} GPUs and trains one fold at a time; pip install "
                        f"'rekfold[ray]' trains {gpus} folds side by side (--cluster local)")
    per_core = n_rows * cfg.epochs * (cfg.folds - 1) / cfg.folds / max(cores, 1)
    if gpus == 0 and cores >= 2 and ray_ok and per_core >= CPU_ROWS_PER_CORE:
        return "local", (f"--cluster auto: {per_core:,.0f} training-row epochs per core, so folds train side by side, "
                         f"one core each, on a local Ray runtime (--cluster none to train them one at a time)")
    return "none", ""


def make_executor(cfg: Config, n_rows: int = 0, *, log: Callable[[str], None] = print,
                  model_factory: Callable | None = None, on_start: Callable | None = None):
    """The executor for a config: in-process, or Ray (``--cluster local`` / ``HOST:PORT`` / ``auto``).

    Raises ConfigError when Ray is asked for and not installed, or the cluster can never meet a part's request.
    """
    where, note = resolve_cluster(cfg, n_rows)
    if note:
        log(note)
    if where == "none" or model_factory is not None:  # a model factory (tests) lives in this process
        return InProcessExecutor(log, model_factory, on_start)
    if not ray_installed():
        raise ConfigError(f"--cluster {cfg.cluster}: needs Ray, which is not installed: pip install 'rekfold[ray]' "
                          f"(Ray {RAY_VERSIONS})")
    from ._ray import RayExecutor

    return RayExecutor(cfg, None if where == "local" else where, log=log, on_start=on_start)


@contextlib.contextmanager
def shared_executors(cfg: Config, n_rows: int = 0, *, log: Callable[[str], None] = print
                     ) -> Iterator[tuple[int, Callable[[], object]]]:
    """For a driver that runs several independent runs at once (tuning's trials side by side): the cluster of
    ``cfg`` started or joined once; yields ``(slots, make)``, ``make()`` giving a one-slot executor on it (whose
    close leaves the cluster up). In-process: one slot."""
    where, note = resolve_cluster(cfg, n_rows)
    if note:
        log(note)
    if where == "none":
        yield 1, lambda: InProcessExecutor(log)
        return
    if not ray_installed():
        raise ConfigError(f"--cluster {cfg.cluster}: needs Ray, which is not installed: pip install 'rekfold[ray]' "
                          f"(Ray {RAY_VERSIONS})")
    from ._ray import RayExecutor, ray_session

    address = None if where == "local" else where
    with ray_session(address):
        whole = RayExecutor(cfg, address, log=log)
        whole.close()
        one = cfg.replace(max_parallel=1)
        yield whole.slots, lambda: RayExecutor(one, address, log=log)


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
