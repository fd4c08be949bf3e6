"""Choosing where parts train: in this process (one part at a time on every core), or side by side on Ray (a local
runtime of this process's own, or a cluster). The one module that picks the executor; the executors themselves
are ``kfold.training._inprocess`` and ``kfold.training._ray`` (imported only when Ray is asked for: it is an
optional extra and takes seconds to import).

``--cluster auto`` on a machine without GPUs measures instead of guessing: whether parts side by side (one share of
the cores each) train faster than one part on every core depends on the data (sequence length) and the machine,
so the probe times both arrangements on a sample of this data and the faster one wins; the answer is kept in
``WORKDIR/cache/arrangement-*.json`` for later commands on the same data and settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import platform
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from kfold.core.config import Config
from kfold.core.errors import ConfigError, DataError, RuntimeLost, StoreError, TrainingError
from kfold.core.textio import write_json_atomic

from ._inprocess import InProcessExecutor
from ._parts import pretrain_part
from ._pretrain import PretrainPayload, PretrainSettings, PretrainSpec, pretrain
from ._probe import measure_here, measure_slots
from ._resources import RAY_VERSIONS, Speed, available_cores

#: Seconds ``ray.init`` takes to start a local runtime, and a fresh Ray worker process takes to start and import
#: torch and transformers before a part can build its model (the model build itself is measured by each probe).
#: Measured with benchmarks/cluster_cpu.py --overheads on an AMD EPYC Zen 3 (2 cores, no bf16; median of 3: 3.7 s
#: and 1.6 s). They only decide whether side-by-side parts could pay at all, before anything is started; the
#: arrangement itself is chosen by timing both (see choose_executor).
RAY_START_SECONDS = 3.7
WORKER_START_SECONDS = 1.6
#: The most that parts side by side are assumed to gain over one part on every core before anything is timed (the
#: best measured on a CPU machine: 1.17x, two one-core folds on a 2-core Zen 4, 3000 SemEval rows).
BEST_GAIN = 1.25
#: How much shorter the measured side-by-side estimate must be to be chosen. On a 2-core Zen 3 (3000 SemEval rows,
#: 4 folds x 1 epoch) the probe predicted 1.13x for two one-core slots and the run took 0.87x of one in this process.
MARGIN = 1.15
#: The settings the arrangement's measurement depends on (its cache key, with the data and the machine).
SPEED_KEYS = ("backbone", "variant", "marker", "max_len", "batch_size", "eval_batch_size", "precision",
              "attn_implementation", "grad_checkpointing", "length_grouping", "augment", "device",
              "cpus_per_fold", "max_parallel", "threads")


def gpu_count() -> int:
    """CUDA devices torch sees on this machine."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ray_installed() -> bool:
    """Whether the ``ray`` extra is installed (looked up, not imported: importing Ray takes seconds)."""
    return importlib.util.find_spec("ray") is not None


def resolve_cluster(cfg: Config, *, cores: int | None = None, gpus: int | None = None, ray_ok: bool | None = None,
                    env: dict | None = None) -> tuple[str, str]:
    """Where parts train: ``("none", note)``, ``("local", note)``, ``("HOST:PORT", note)``, or ``("measure", "")``
    when ``--cluster auto`` must time both arrangements on this data (a CPU machine with several cores and Ray);
    ``note`` says why auto chose (or could not choose) Ray, else "".

    ``auto``: the cluster in ``RAY_ADDRESS`` when it is set; with more than one GPU, a local runtime when Ray is
    installed (else none, saying what ``rekfold[ray]`` would give); without GPUs, measure when there are two cores or
    more and Ray is installed, else none. ``cores``, ``gpus``, ``ray_ok``, ``env`` are replaceable for tests.
    """
    env = os.environ if env is None else env
    if cfg.cluster != "auto":
        return cfg.cluster, ""
    if env.get("RAY_ADDRESS"):
        return env["RAY_ADDRESS"], f"--cluster auto: joining the Ray cluster in RAY_ADDRESS ({env['RAY_ADDRESS']})"
    cores = available_cores() if cores is None else cores
    gpus = gpu_count() if gpus is None else gpus
    ray_ok = ray_installed() if ray_ok is None else ray_ok
    if gpus > 1:
        if ray_ok:
            return "local", f"--cluster auto: {gpus} GPUs, so folds train side by side on a local Ray runtime"
        return "none", (f"note: this machine has {gpus} GPUs and trains one fold at a time; pip install "
                        f"'rekfold[ray]' trains {gpus} folds side by side (--cluster local)")
    if gpus == 0 and cores >= 2 and ray_ok:
        return "measure", ""
    return "none", ""


@dataclass(frozen=True)
class Work:
    """What a command will train: training rows x epochs summed over its parts (augmentation and R-Drop counted),
    and how many parts."""

    row_epochs: float
    parts: int


def part_row_epochs(cfg: Config, n_rows: int, refit: bool = False) -> float:
    """Training rows x epochs of one part of a run on ``n_rows`` rows: a fold's training part, or every row for
    the refit (x ``cfg.step_cost()``: entity-swap augmentation, R-Drop, adversarial passes)."""
    rows = n_rows if refit else n_rows * (cfg.folds - 1) / cfg.folds
    return rows * cfg.epochs * cfg.step_cost()


def work_of(cfgs: list[Config], n_rows: int) -> Work:
    """The work of runs of ``cfgs`` on ``n_rows`` training rows (their folds, and their refits with ``--refit``).

    >>> work_of([Config(folds=4, epochs=2)], 1000)
    Work(row_epochs=6000.0, parts=4)
    """
    row_epochs = sum(cfg.folds * part_row_epochs(cfg, n_rows) + (part_row_epochs(cfg, n_rows, True) if cfg.refit else 0)
                     for cfg in cfgs)
    return Work(row_epochs, sum(cfg.folds + (1 if cfg.refit else 0) for cfg in cfgs))


def seconds_here(work: Work, here: Speed) -> float:
    """Wall seconds of the work one part at a time on every core: its training and a model build per part."""
    return work.row_epochs / here.train_rows_per_s + work.parts * here.load_seconds


def seconds_side_by_side(work: Work, slot: Speed, slots: int) -> float:
    """Wall seconds of the work on ``slots`` slots: the training shared out, a worker start and a model build per
    part in each slot's rounds, and Ray's start-up."""
    rounds = math.ceil(work.parts / max(slots, 1))
    return (work.row_epochs / (slot.train_rows_per_s * slots) + rounds * (slot.load_seconds + WORKER_START_SECONDS)
            + RAY_START_SECONDS)


def could_pay(work: Work, here: Speed, slots: int, measuring: float = 0.0) -> bool:
    """Whether parts side by side could beat ``here`` at all: even if the slots together trained BEST_GAIN times
    as fast as one part on every core, Ray's start-up and a worker per part, and ``measuring`` (the seconds that
    timing the slots would take: a runtime started and the probe run on every slot), must cost less than the time
    saved. When they cannot, nothing is started to measure it."""
    best = dataclasses.replace(here, train_rows_per_s=here.train_rows_per_s * BEST_GAIN / max(slots, 1))
    return slots > 1 and seconds_side_by_side(work, best, slots) + measuring < seconds_here(work, here)


def measuring_seconds(probe_here: float, slots: int) -> float:
    """Seconds that timing ``slots`` slots would cost: Ray's start-up, a worker per slot, and the probe on each slot
    at once, each with 1/``slots`` of the cores the probe here (``probe_here`` seconds) had: up to ``slots`` times
    as long. (Zen 3, 1000 SemEval rows: 15 s here, 40 s for the slots, 2 of them.)"""
    return RAY_START_SECONDS + WORKER_START_SECONDS + probe_here * max(slots, 1)


def decide(work: Work, here: Speed, slot: Speed, slots: int) -> tuple[bool, str]:
    """Side by side or not, from the measured speeds of both arrangements: (use them, the line that says why).
    Side by side only when its estimate is MARGIN times shorter: a smaller measured gain is within the probe's
    error."""
    a, b = seconds_here(work, here), seconds_side_by_side(work, slot, slots)
    line = (f"one part on all cores {here.train_rows_per_s:.1f} training rows/s (~{a / 60:.1f} min), {slots} side by "
            f"side {slots} x {slot.train_rows_per_s:.1f} (~{b / 60:.1f} min with Ray's start-up and a worker per part)")
    return b * MARGIN < a, line


@dataclass
class Placement:
    """The executor chosen, with what was measured to choose it (None where nothing was measured)."""

    executor: object
    here: Speed | None = None
    slot: Speed | None = None


def choose_executor(cfg: Config, *, workdir: str | Path | None = None, sample: Callable[[], tuple] | None = None,
                    work: Callable[[Speed], Work] | None = None, data_hash: str = "", side_by_side: int = 0,
                    log: Callable[[str], None] = print, model_factory: Callable | None = None,
                    on_start: Callable | None = None) -> Placement:
    """The executor for a config: in-process, or Ray (``--cluster local`` / ``HOST:PORT`` / ``auto``).

    ``--cluster auto`` on a CPU machine: ``sample()`` gives ``(PartSpec, ProbeSample)`` of the data; the probe runs
    here on every core, and, where parts side by side could pay for ``work(speed here)`` (:func:`could_pay`), on
    every slot of a local runtime, and side by side wins when its estimate is MARGIN times shorter (the answer kept
    in ``WORKDIR/cache`` under ``data_hash`` and the speed settings). Where they could not pay, nothing is started
    and the parts train here. Without ``sample`` it stays in this process. ``side_by_side``: parts the caller will have
    at once (CPU parts share the cores among them).

    Raises ConfigError when Ray is asked for and not installed, or the cluster can never meet a part's request.
    """
    where, note = resolve_cluster(cfg)
    if note:
        log(note)
    if model_factory is not None:  # a model factory (tests) lives in this process
        return Placement(InProcessExecutor(log, model_factory, on_start))
    if where == "measure":
        return _measured(cfg, workdir, sample, work, data_hash, side_by_side, log, on_start)
    if where == "none":
        return Placement(InProcessExecutor(log, None, on_start))
    return Placement(ray_executor(cfg, where, log=log, on_start=on_start, side_by_side=side_by_side))


def make_executor(cfg: Config, **kwargs):
    """:func:`choose_executor`'s executor alone."""
    return choose_executor(cfg, **kwargs).executor


def run_pretrain(cfg: Config, out: str | Path, settings: PretrainSettings = PretrainSettings(), *,
                 use_test: bool = False, log: Callable[[str], None] = print, executor=None) -> Path:
    """``kfold pretrain`` (:func:`kfold.training.pretrain`) here, or epoch by epoch on one slot of a Ray cluster:
    ``--cluster local`` or ``HOST:PORT``; ``auto``: the cluster in ``RAY_ADDRESS`` when it is set, else here (a
    pretraining is one part: nothing trains beside it). On a cluster every epoch is a part that gets the state the
    epoch before left and returns the new one to this process, which saves it: the same command resumes after the
    last complete epoch, with or without the cluster, and no node needs a shared disk. The cluster is started or
    joined at the first epoch to train (a finished folder, or bad data, needs none); an epoch whose node dies is
    submitted again, ``--retries`` times, like a fold. ``executor``: one that runs
    :func:`kfold.training.pretrain_part` (tests pass a fake).

    Raises the part's own error type (TrainingError, ConfigError, ...) naming the epoch when a part fails or its
    node dies past the retries, RuntimeLost naming it when the runtime itself is gone (the epochs before it are
    kept in both cases), ConfigError when a node lacks the backbone or Ray is missing.
    """
    if cfg.cluster == "auto" and not os.environ.get("RAY_ADDRESS"):
        where, note = "none", ""  # several GPUs or a probe would place several parts; a pretraining is one
    else:
        where, note = resolve_cluster(cfg)
    if executor is None and where == "none":
        return pretrain(cfg, out, settings, use_test=use_test, log=log)
    if note and where != "none":
        log(note)
    epochs = _EpochsOnCluster(lambda: executor or ray_executor(cfg, where, log=log, part_fn=pretrain_part),
                              cfg.backbone, cfg.retries, log)
    try:  # closed on every path: a refused node check, a failed epoch, Ctrl-C
        return pretrain(cfg, out, settings, use_test=use_test, log=log, run_epoch=epochs)
    finally:
        epochs.close()


class _EpochsOnCluster:
    """Runs one pretraining epoch at a time as a part on an executor (a Ray one), made at the first epoch, with a
    whole node's cores where ``--cpus-per-fold`` is 0 (the default)."""

    def __init__(self, make: Callable, backbone: str, retries: int, log: Callable[[str], None]):
        self.make, self.backbone, self.retries, self.log = make, backbone, retries, log
        self.executor = None

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()

    def __call__(self, spec: PretrainSpec, payload: PretrainPayload) -> tuple[dict, dict]:
        if self.executor is None:
            self.executor = self.make()
            self.executor.check([self.backbone])  # every node has the source backbone (and the same versions)
        saved = {0: "", 1: "epoch 1 is saved and "}.get(spec.epoch, f"epochs 1-{spec.epoch} are saved and ")
        for attempt in range(1, self.retries + 2):
            try:
                self.executor.submit(spec.epoch, spec, self.executor.put(payload), alone=True)
                events = self.executor.wait()
            except RuntimeLost as exc:
                raise RuntimeLost(f"pretrain {spec.name}: {exc}; {saved}the same command resumes there") from None
            if len(events) != 1 or events[0].key != spec.epoch:
                raise TrainingError(f"pretrain {spec.name}: the executor answered {len(events)} event(s) "
                                    f"({', '.join(str(e.key) for e in events)}), not this epoch's")
            event = events[0]
            if event.kind == "done":
                for line in event.result.log:  # lines a part kept (those it sent as it ran were logged already)
                    self.log(line)
                return event.result.record, event.result.state_dict
            if event.kind == "died" and attempt <= self.retries:
                self.log(f"pretrain {spec.name}: its worker died ({event.message}); submitted again (attempt "
                         f"{attempt + 1} of {self.retries + 1})")
                continue
            break
        if event.traceback:
            for line in event.traceback.rstrip().splitlines():
                self.log(f"pretrain {spec.name} | {line}")
        err = event.error
        why = event.message or (str(err).strip().splitlines() or [type(err).__name__])[0]
        line = (f"pretrain {spec.name} {'failed' if event.kind == 'error' else 'was lost'} on the cluster ({why}); "
                f"{saved}the same command resumes there")
        raise next((c for c in (ConfigError, DataError, StoreError) if isinstance(err, c)), TrainingError)(line)


def ray_executor(cfg: Config, address: str, **kwargs):
    """A Ray executor on ``address`` (``local`` or HOST:PORT); ConfigError when Ray is not installed."""
    if not ray_installed():
        raise ConfigError(f"--cluster {cfg.cluster}: needs Ray, which is not installed: pip install 'rekfold[ray]' "
                          f"(Ray {RAY_VERSIONS})")
    from ._ray import RayExecutor

    return RayExecutor(cfg, address, **kwargs)


def _measured(cfg: Config, workdir, sample, work, data_hash: str, side_by_side: int, log, on_start) -> Placement:
    """``--cluster auto`` on a CPU machine: both arrangements timed on this data (or their earlier answer)."""
    cores = available_cores()
    if sample is None or work is None:
        return Placement(InProcessExecutor(log, None, on_start))
    path = _cache_path(cfg, workdir, data_hash, cores, side_by_side)
    if path is not None and path.exists():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            kept = json.loads(path.read_text())
            here, slot = Speed(**kept["here"]), (Speed(**kept["slot"]) if kept["slot"] else None)
            if kept["where"] == "local":
                log(f"--cluster auto: parts side by side on a local Ray runtime, as measured before on this data "
                    f"({kept['line']}; {path})")
                # the same threads per part as when it was measured
                at_once = side_by_side or work(here).parts
                return Placement(ray_executor(cfg, "local", log=log, on_start=on_start, side_by_side=at_once),
                                 here, slot)
            return Placement(InProcessExecutor(log, None, on_start), here, slot)
    spec, probe = sample()
    t0 = time.perf_counter()
    here = measure_here(spec, probe)
    probe_here = time.perf_counter() - t0
    amount = work(here)
    slots = max(1, min(cores, amount.parts))
    chosen = Placement(InProcessExecutor(log, None, on_start), here)
    line = ""
    if could_pay(amount, here, slots, measuring_seconds(probe_here, slots)):
        executor = ray_executor(cfg, "local", log=log, on_start=on_start, side_by_side=side_by_side or amount.parts)
        try:  # (the executor is closed on every way out of here but the one that returns it)
            slot = measure_slots(spec, probe, executor)
            use, line = decide(amount, here, slot, executor.slots)
        except BaseException:
            executor.close()
            raise
        if use:
            log(f"--cluster auto: measured on this data: {line}; parts train side by side on a local Ray runtime "
                "(--cluster none for one at a time)")
            chosen = Placement(executor, here, slot)
        else:
            executor.close()
            log(f"--cluster auto: measured on this data: {line}; parts train one at a time in this process")
            chosen.slot = slot
    else:
        log(f"--cluster auto: parts train one at a time in this process (~{seconds_here(amount, here) / 60:.1f} min "
            "on all cores, too little for parts side by side to pay for starting Ray and timing them)")
    if path is not None:
        try:
            write_json_atomic(path, {"where": "local" if chosen.executor.slots > 1 else "none", "line": line,
                                     "here": asdict(here), "slot": asdict(chosen.slot) if chosen.slot else None,
                                     "cores": cores, "cpu": platform.processor() or platform.machine()})
        except BaseException:
            chosen.executor.close()
            raise
    return chosen


def _cache_path(cfg: Config, workdir, data_hash: str, cores: int, side_by_side: int) -> Path | None:
    """Where the arrangement measured for these settings, data and machine is kept (None without a workdir)."""
    if workdir is None or not data_hash:
        return None
    key = json.dumps({"settings": {k: getattr(cfg, k) for k in SPEED_KEYS}, "data": data_hash, "cores": cores,
                      "side_by_side": side_by_side, "machine": platform.processor() or platform.machine()},
                     sort_keys=True)
    return Path(workdir) / "cache" / f"arrangement-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


@contextlib.contextmanager
def shared_executors(cfg: Config, *, side_by_side: int = 0, placement: Placement | None = None,
                     log: Callable[[str], None] = print) -> Iterator[tuple[int, Callable[[], object]]]:
    """For a driver that runs several independent runs at once (tuning's trials side by side): the cluster of
    ``cfg`` (or of ``placement``, already chosen) started or joined once; yields ``(slots, make)``, ``make()``
    giving a one-slot executor on it (whose close leaves the cluster up). In-process: one slot."""
    if placement is None:
        where, note = resolve_cluster(cfg)
        if note:
            log(note)
        if where in ("none", "measure"):
            yield 1, lambda: InProcessExecutor(log)
            return
        placement = Placement(ray_executor(cfg, where, log=log, side_by_side=side_by_side))
    whole = placement.executor
    if whole.slots <= 1 and isinstance(whole, InProcessExecutor):
        yield 1, lambda: InProcessExecutor(log)
        return
    from ._ray import RayExecutor, stop_ray

    address, slots, cpus = whole.address, whole.slots, whole.cpus
    # the runtime stays up while the one-slot executors come and go: this function holds it from here on
    owned = whole.release()
    try:
        one = cfg.replace(max_parallel=1, cpus_per_fold=cfg.cpus_per_fold or cpus)
        yield slots, lambda: RayExecutor(one, address, log=log)
    finally:
        if owned:
            stop_ray()
