"""Optuna studies whose trials are k-fold runs, with folds as pruning steps.

- Storage: ``sqlite:///WORKDIR/tuning.db`` by default (resumable after a crash), or any Optuna RDB URL
  (PostgreSQL, MySQL) shared by several processes or machines. optuna-dashboard reads it as is.
- Exactly ``n_trials`` trials: the wanted trials are queued as WAITING trials (under a lock), and workers
  pop them atomically through the storage; a rerun queues only the trials still wanted.
- Heartbeats: a killed worker's RUNNING trial goes stale, is marked FAIL by the next worker and re-queued
  with the same parameters (``RetryFailedTrialCallback``).
- A trial that raises (out of memory, NaN loss) is recorded FAIL with its reason; the study goes on.
- Trials side by side (one per slot of a cluster): TPE with ``constant_liar=True``, so a trial sampled while others
  run treats them as poor results and looks elsewhere instead of sampling near-duplicates.
- Only Optuna's public API: the storage object we open, ``ask``/``tell``, ``retried_trial_number``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from kfold.core.config import Config
from kfold.core.errors import ConfigError, RuntimeLost, ToolkitError
from kfold.core.metrics import LOWER_IS_BETTER, METRICS, metric_fn
from kfold.core.textio import file_lock, read_json

PRUNERS = ("median", "wilcoxon", "none")
DIRECTION = {m: "minimize" if m in LOWER_IS_BETTER else "maximize" for m in METRICS}


@dataclass(frozen=True)
class StudySettings:
    """How a study runs (the k-fold settings of each trial are the base Config plus the sampled values)."""

    study: str
    workdir: str = "runs"
    storage: str = ""
    metric: str = "accuracy"
    pruner: str = "median"
    heartbeat: int = 60
    grace: int = 180
    max_retry: int = 2
    sampler_seed: int | None = None

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.workdir).resolve() / 'tuning.db'}"


def _optuna():
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats and fail_stale_trials are marked experimental; we rely on them on purpose
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # we record heartbeats ourselves around ask()/tell() (see heartbeat() below), not through optimize()
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def _retry_callback(optuna):
    """Optuna >= 4.9 calls it RetryHeartbeatStaleTrialCallback; older releases RetryFailedTrialCallback."""
    return getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback


@contextlib.contextmanager
def heartbeat(storage, trial_id: int, interval: float) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` seconds while the body runs, so other workers can
    tell a live trial from one whose worker died."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def open_study(settings: StudySettings, base: Config | None = None, space: dict | None = None, create: bool = True):
    """Create or load a study. The base config and space are stored in the study on creation and must
    match on later runs (a changed base config is another study)."""
    optuna = _optuna()
    if settings.metric not in DIRECTION:
        raise ConfigError(f"unknown metric '{settings.metric}'; expected one of [{', '.join(DIRECTION)}]")
    if settings.pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner '{settings.pruner}'; expected one of [{', '.join(PRUNERS)}]")
    Path(settings.workdir).mkdir(parents=True, exist_ok=True)
    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
              "wilcoxon": optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2),
              "none": optuna.pruners.NopPruner()}[settings.pruner]
    # constant liar: trials in flight count as bad results while the next one is sampled (trials run side by side,
    # here on a cluster's slots or on other machines sharing the storage); without it, TPE samples near-duplicates
    sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed, n_startup_trials=4, constant_liar=True)
    # Two workers starting together would both create the storage's tables (SQLite: "table already exists",
    # PostgreSQL: a unique violation in pg_type) and both set the study's attributes: serialise that on this
    # machine with the workdir lock, and retry for workers on other machines sharing the database.
    with _queue_lock(settings):
        storage = _connect(optuna, settings)
        _STORAGES[settings.storage_url()] = storage
        try:
            study = optuna.load_study(study_name=settings.study, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            if not create:
                raise ConfigError(f"study '{settings.study}' does not exist in {settings.storage_url()}") from None
            try:
                study = optuna.create_study(study_name=settings.study, storage=storage, sampler=sampler,
                                            pruner=pruner, direction=DIRECTION[settings.metric])
            except optuna.exceptions.DuplicatedStudyError:  # a worker on another machine created it first
                study = optuna.load_study(study_name=settings.study, storage=storage, sampler=sampler, pruner=pruner)
        if base is not None:
            _check_or_store_settings(study, settings, base, space)
    return study


#: The storage object each opened study uses (by URL): heartbeats and trial ids go through its public methods.
_STORAGES: dict = {}


def storage_of(settings: StudySettings):
    """The RDB storage :func:`open_study` opened for these settings."""
    return _STORAGES[settings.storage_url()]


def _connect(optuna, settings: StudySettings, attempts: int = 5):
    """Open the RDB storage; creating its tables races with other machines' workers, so retry a few times."""
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                settings.storage_url(), heartbeat_interval=settings.heartbeat, grace_period=settings.grace,
                heartbeat_stale_trial_callback=_retry_callback(optuna)(max_retry=settings.max_retry))
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"--storage {settings.storage_url()}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:  # SQLAlchemy's errors carry no common base we can import cheaply
            text = str(exc)
            racing = type(exc).__name__ == "IntegrityError" or "already exists" in text or "locked" in text
            if not racing or attempt == attempts - 1:
                raise ConfigError(f"--storage {settings.storage_url()}: cannot connect ({type(exc).__name__}: "
                                  f"{text.splitlines()[0]})") from None
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def _identity(config: dict) -> dict:
    """The settings that make a study's trials what they are: the base config without the keys that only say where
    and how fast parts train (another worker may use another --cluster, --cpus-per-fold or --threads; its data,
    test file and data repairs must be the same)."""
    from kfold.training import PLACEMENT_KEYS

    # lists, as the study's storage gives them back (JSON), compare equal to the config's tuples
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k not in PLACEMENT_KEYS}


def _check_or_store_settings(study, settings: StudySettings, base: Config, space: dict | None) -> None:
    attrs = study.user_attrs
    # the pseudo-label teachers are named in the config, but what they predict is their probabilities: a teacher
    # retrained under its name makes the study's later trials other trials (their runs are tagged, not digest-named)
    digest = ""
    if base.pseudo_from:
        from ensemble import load_teachers

        digest = load_teachers(base.pseudo_from, settings.workdir).digest
    if "base_config" not in attrs:
        study.set_user_attr("base_config", base.to_dict())
        study.set_user_attr("space", space)
        study.set_user_attr("metric", settings.metric)
        study.set_user_attr("pseudo_digest", digest)
        return
    if attrs.get("pseudo_digest", "") != digest:
        raise ConfigError(f"study '{settings.study}' was started with other pseudo-label teachers' probabilities "
                          f"(digest {attrs.get('pseudo_digest', '')[:12] or 'none'}, now {digest[:12] or 'none'}); "
                          "use another --study name")
    stored, now = _identity(attrs["base_config"]), _identity(base.to_dict())
    defaults = Config().to_dict()
    defaults = _identity(defaults)
    changed = sorted(k for k, v in now.items() if stored.get(k, defaults[k]) != v)
    if changed or attrs.get("space") != space or attrs.get("metric") != settings.metric:
        raise ConfigError(f"study '{settings.study}' was started with other settings "
                          f"({', '.join(changed) or 'search space or metric'}); use another --study name")


@contextlib.contextmanager
def _queue_lock(settings: StudySettings) -> Iterator[None]:
    """Serialise creating the study and topping up its queue between processes on this machine."""
    with file_lock(Path(settings.workdir) / f".tuning-{settings.study}.lock"):
        yield


def queue_trials(study, settings: StudySettings, n_trials: int) -> int:
    """Queue WAITING trials so COMPLETE + PRUNED + RUNNING + WAITING reaches ``n_trials``; returns how many were added."""
    optuna = _optuna()
    TS = optuna.trial.TrialState
    with _queue_lock(settings):
        optuna.storages.fail_stale_trials(study)
        counted = study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.PRUNED, TS.RUNNING, TS.WAITING))
        missing = max(0, n_trials - len(counted))
        for _ in range(missing):
            study.enqueue_trial({})
    return missing


def search(base: Config, settings: StudySettings, space: dict, n_trials: int, timeout: float | None = None,
           log: Callable[[str], None] = print, run_trial: Callable | None = None, slots: int | None = None
           ) -> dict[str, int]:
    """Work on a study until no queued trial is left (or ``timeout`` seconds have passed).

    With a cluster (``base.cluster``: local, HOST:PORT, or auto choosing one) trials run side by side, one per slot:
    this process owns the study (ask and tell against its storage) and each trial's fold scores come back to it for
    per-fold pruning, so the workers need no database access.

    Parameters
    ----------
    base: the k-fold settings every trial starts from. settings: study name, storage, metric, pruner.
    space: from :func:`tuning.load_space`. n_trials: trials wanted in the study in total (0: only help
    with trials already queued). run_trial: ``(config, tag, on_fold) -> score`` (tests pass tiny runs).
    slots: trials at once (default: the cluster's slots; 1 in-process).

    Returns
    -------
    Counts of the trials this process finished by state.
    """
    import threading

    from kfold.training import shared_executors

    data = check_metric(base, settings) if run_trial is None else None  # the metric defined on these labels?
    study = open_study(settings, base, space)
    if n_trials:
        added = queue_trials(study, settings, n_trials)
        log(f"study '{settings.study}' ({settings.storage_url()}): {added} trial(s) queued, target {n_trials}")
    # where trials train (a measured choice with --cluster auto on a CPU machine); entered at once, so a runtime
    # started here is shut down on every path
    placement = _trial_placement(base, settings, data, n_trials, log) if data is not None else None
    with shared_executors(base, placement=placement, log=log) as (cluster_slots, make), \
            _study_trackers(base, settings, log, run_trial is None) as trackers:
        workers = slots or cluster_slots
        trial_fn = run_trial or _kfold_trial(settings, make, trackers)
        counts = [{"COMPLETE": 0, "PRUNED": 0, "FAIL": 0} for _ in range(workers)]
        started = time.monotonic()
        if workers == 1:
            _work(study, base, settings, space, trial_fn, counts[0], started, timeout, log)
        else:
            log(f"{workers} trials side by side, one per slot; this process keeps the study and decides pruning")
            errors: list[BaseException] = []

            def work(done: dict) -> None:
                try:
                    _work(study, base, settings, space, trial_fn, done, started, timeout, log)
                except BaseException as exc:  # noqa: BLE001 - raised in the calling thread below
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(done,), daemon=True) for done in counts]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
    return {state: sum(c[state] for c in counts) for state in counts[0]}


def _work(study, base: Config, settings: StudySettings, space: dict, run_trial: Callable, done: dict, started: float,
          timeout: float | None, log: Callable[[str], None]) -> None:
    """Take queued trials one after another until none is left (one thread per slot runs this)."""
    optuna = _optuna()
    TS = optuna.trial.TrialState
    from ._space import suggest

    while timeout is None or time.monotonic() - started < timeout:
        with _queue_lock(settings):
            optuna.storages.fail_stale_trials(study)  # re-queues trials of workers that died
            waiting = {t.number for t in study.get_trials(deepcopy=False, states=(TS.WAITING,))}
            if not waiting:
                break
            trial = study.ask()  # pops a WAITING trial when one is left
        if trial.number not in waiting:
            # a worker on another machine took the last queued trial between our check and ask()
            trial.set_user_attr("fail_reason", "surplus: no queued trial was left")
            study.tell(trial, state=TS.FAIL)
            break
        params = suggest(trial, space)
        cfg = base.replace(**params)
        # a retried trial (its worker died) reuses the first attempt's run folder, so its finished folds count
        storage = storage_of(settings)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(settings.study),
                                                                   trial.number)
        origin = _retry_callback(optuna).retried_trial_number(storage.get_trial(trial_id))
        tag = f"{settings.study}-t{trial.number if origin is None else origin}"
        t0 = time.monotonic()
        with heartbeat(storage, trial_id, settings.heartbeat):
            state, value, reason = _run(trial, cfg, tag, run_trial, settings, base.folds)
        secs = time.monotonic() - t0
        trial.set_user_attr("seconds", round(secs, 1))
        _run_attrs(trial, cfg, tag, settings)
        if state == "COMPLETE":
            study.tell(trial, value)
        elif state == "PRUNED":
            study.tell(trial, state=TS.PRUNED)
        else:
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TS.FAIL)
        done[state] += 1
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        result = f"{settings.metric} {value:.3f}" if state == "COMPLETE" else (reason if state == "FAIL" else
                                                                               f"at fold {trial.user_attrs.get('folds_done', '?')}")
        log(f"trial {trial.number} {state}: {result}  {shown}  ({secs:.0f}s)")


def check_metric(base: Config, settings: StudySettings):
    """ConfigError when the study's metric is not defined on the training labels (micro_f1 without a no-relation
    label), so that no trial is started only to fail the same way. Returns the loaded data."""
    from kfold.data import load_data

    data = load_data(base, settings.workdir, log=lambda m: None)
    metric_fn(settings.metric, data.train.label_names, base.no_relation or None)
    return data


def _trial_placement(base: Config, settings: StudySettings, data, n_trials: int, log: Callable[[str], None]):
    """Where trials train: the base config's cluster; with ``--cluster auto`` on a CPU machine, one trial on every
    core against trials side by side (one per slot), timed on this data for the trials wanted."""
    from kfold.training import choose_executor, probe_sample_of_data, work_of

    trials = max(1, n_trials)
    return choose_executor(base, workdir=settings.workdir,
                           sample=lambda: probe_sample_of_data(base, data, settings.workdir),
                           work=lambda here: work_of([base] * trials, len(data.train)),
                           data_hash=data.train.content_hash(), side_by_side=trials, log=log)


def _run_attrs(trial, cfg: Config, tag: str, settings: StudySettings) -> None:
    """The trial's run folder and its OOF scores as user attributes (optuna-dashboard shows them), when it has one."""
    from kfold.training import run_name

    folder = Path(settings.workdir) / "runs" / run_name(cfg, tag)
    if not folder.is_dir():
        return
    trial.set_user_attr("run_folder", str(folder.resolve()))
    summary = folder / "summary.json"
    with contextlib.suppress(ToolkitError, OSError):
        for key, value in (read_json(summary).get("oof", {}) if summary.exists() else {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                trial.set_user_attr(f"oof_{key}", round(float(value), 4))


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _run(trial, cfg: Config, tag: str, run_trial: Callable, settings: StudySettings, k: int) -> tuple[str, float, str]:
    """Run one trial; returns (state, value, failure reason)."""
    optuna = _optuna()
    scores: list[float] = []

    def on_fold(fold: int, record: dict) -> None:
        value = _fold_value(record, settings.metric)
        scores.append(value)
        trial.set_user_attr("folds_done", len(scores))
        trial.set_user_attr(f"fold{fold}_{settings.metric}", round(value, 4))
        # Wilcoxon compares per-fold scores across trials; the median pruner a running mean (smoother)
        trial.report(value if settings.pruner == "wilcoxon" else float(np.mean(scores)), fold)
        if trial.should_prune():
            raise optuna.TrialPruned()

    try:
        value = run_trial(cfg, tag, on_fold)
    except optuna.TrialPruned:
        trial.set_user_attr("folds_skipped", k - len(scores))
        return "PRUNED", float("nan"), ""
    except RuntimeLost:  # not this trial's failure: every later trial would fail the same way
        raise
    except ToolkitError as exc:
        return "FAIL", float("nan"), f"{type(exc).__name__}: {exc}"
    except (RuntimeError, MemoryError) as exc:  # out of memory and other runtime failures of one trial
        return "FAIL", float("nan"), f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if value is None or not math.isfinite(value):
        return "FAIL", float("nan"), f"score is {value}"
    return "COMPLETE", float(value), ""


def _fold_value(record: dict, metric: str) -> float:
    return float(record["metrics"][metric])


@contextlib.contextmanager
def _study_trackers(base: Config, settings: StudySettings, log: Callable[[str], None], real: bool):
    """The trackers of ``--report-to`` for the study's trials (one tracker run per trial), closed at the end."""
    if not (real and base.report_to):
        yield None
        return
    from kfold.tracking import trackers_for

    trackers = trackers_for(base, settings.workdir, log)
    failed = True
    try:
        yield trackers
        failed = False
    finally:
        if trackers:
            trackers.close(failed=failed)


def _kfold_trial(settings: StudySettings, make_executor: Callable, trackers=None) -> Callable:
    """The real trial: a k-fold run in the study's workdir, on an executor of its own (one slot of the cluster);
    its score is the OOF metric. With trackers, the trial is one tracker run tagged with the study and the trial
    number (the tag's ``-t<n>``)."""

    def run(cfg: Config, tag: str, on_fold) -> float:
        from ensemble import load_teachers
        from kfold.training import run_kfold

        executor = make_executor()
        tags = {"optuna.study": settings.study, "optuna.trial": tag.rsplit("-t", 1)[-1]}
        try:
            out = run_kfold(cfg, settings.workdir, tag=tag, on_fold=on_fold, log=lambda m: None, executor=executor,
                            trackers=trackers, tracker_tags=tags, teachers=load_teachers)
        finally:
            executor.close()
        if not out.complete:
            raise ToolkitError(f"folds {out.busy} are being trained by another process")
        return out.oof_scores[settings.metric]

    return run
