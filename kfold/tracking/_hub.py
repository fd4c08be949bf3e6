"""The trackers of one command, fed on a background thread so that a slow or failing tracker never stops or slows
training: the driver queues calls and goes on; the thread makes them, in order, on every tracker still working.
A tracker that raises is warned about once and left out for the rest of the command.

Each toolkit run is one tracker run, keyed by its run folder; the tracker run ids are kept in the folder's
``tracker.json``, so a resumed run (or ``--fold`` split across invocations) reattaches to the same tracker run.
Several tracker runs are open at once (a queue of runs, tuning trials side by side): every call names its run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from kfold.core.config import TRACKERS, tracker_names
from kfold.core.errors import ConfigError, StoreError, unknown_name
from kfold.core.textio import file_lock, read_json, write_json_atomic

#: The file in a run folder that keeps each tracker's run id.
TRACKER_FILE = "tracker.json"
#: Seconds ``close`` waits for queued calls before it drops them (the command's own work is done by then).
CLOSE_SECONDS = 120.0


def check_trackers(report_to: str) -> tuple[str, ...]:
    """The tracker names of ``report_to``; ConfigError, in one line naming the extra, when a package is missing."""
    names = tracker_names(report_to)
    for name in names:
        if name not in TRACKERS:
            raise unknown_name("--report-to tracker", name, TRACKERS)
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"--report-to {name}: the {name} package is not installed; "
                              f"pip install 'rekfold[{name}]'")
    return names


class Trackers:
    """The trackers of one command (see the module docstring).

    ``names``: tracker names (``check_trackers``); ``workdir``: the run store they are grouped by (MLflow
    experiment, W&B group, TensorBoard folder ``<workdir>/tensorboard/<run>``); ``backends``: tracker objects to
    use instead (tests). ``log``: where the one warning per failing tracker goes.

    Example
    -------
    >>> with Trackers(("tensorboard",), "runs") as t:  # doctest: +SKIP
    ...     t.open_run(Path("runs/runs/split-minilm-s1"), "split-minilm-s1", {"lr": 1e-4})
    ...     t.metrics(Path("runs/runs/split-minilm-s1"), {"fold0/train_loss": 1.2}, step=1)
    """

    def __init__(self, names: tuple[str, ...], workdir: str | Path, *, log: Callable[[str], None] = print,
                 mlflow_uri: str = "", wandb_project: str = "rekfold", backends: list | None = None):
        from ._backends import make_backend

        self.workdir = Path(workdir).resolve()
        self.log = log
        self.backends = (backends if backends is not None
                         else [make_backend(n, self.workdir, mlflow_uri, wandb_project) for n in names])
        self.failed: set[str] = set()
        self.lock = threading.Lock()  # the caller's side may be several threads (tuning trials side by side)
        self.opened: set[Path] = set()  # runs opened and not closed, as the callers see it (the threads lag behind)
        # one queue and thread per tracker: a stuck tracker holds back only its own calls
        self.workers = [_Worker(self, backend) for backend in self.backends]

    def __bool__(self) -> bool:
        return bool(self.backends)

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(failed=kind is not None)

    # -- what the driver calls: each returns at once -------------------------------------------------------------
    def _put(self, call) -> None:
        for worker in self.workers:
            worker.calls.put(call)

    def open_run(self, folder: Path, name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        """Start (or reattach to) the tracker run of the toolkit run in ``folder``, with its config as parameters."""
        with self.lock:
            self.opened.add(Path(folder))
        self._put(("open", Path(folder), name, dict(params), dict(tags or {})))

    def metrics(self, folder: Path, values: dict[str, float], step: int) -> None:
        """Log ``values`` at ``step`` (an epoch) in the run's tracker run."""
        if values:
            self._put(("metrics", Path(folder), dict(values), int(step)))

    def artifact(self, folder: Path, path: Path) -> None:
        """Attach a file (summary.json, report.html)."""
        self._put(("artifact", Path(folder), Path(path)))

    def close_run(self, folder: Path, failed: bool = False) -> None:
        """Finish the run's tracker run, as failed when ``failed`` (a later ``open_run`` of the folder reattaches)."""
        with self.lock:
            self.opened.discard(Path(folder))
        self._put(("close", Path(folder), bool(failed)))

    def close(self, timeout: float = CLOSE_SECONDS, failed: bool = False) -> None:
        """Close every open tracker run (as failed when ``failed``) and wait, at most ``timeout`` seconds in all,
        for the queued calls."""
        with self.lock:
            left = list(self.opened)
        for folder in left:
            self.close_run(folder, failed)
        self._put(None)
        end = time.monotonic() + timeout
        for worker in self.workers:
            worker.thread.join(max(0.0, end - time.monotonic()))
        stuck = [w.backend.name for w in self.workers if w.thread.is_alive()]
        if stuck:
            self.log(f"warning: tracker {', '.join(stuck)} did not finish in {timeout:g}s; what was not sent yet is "
                     "dropped (the run store has all of it: `kfold report --to` sends it)")

    def say_failed(self, backend, what: str, exc: Exception) -> None:
        """The first failure of a tracker, said once; nothing more is sent to it."""
        with self.lock:
            if backend.name in self.failed:
                return
            self.failed.add(backend.name)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self.log(f"warning: tracker {backend.name} failed ({what}: {type(exc).__name__}: {text}); nothing more "
                 "is sent to it in this command, training goes on")


class _Worker:
    """One tracker's queue and thread: its calls in order; after its first failure, none."""

    def __init__(self, hub: Trackers, backend):
        self.hub, self.backend = hub, backend
        self.handles: dict[Path, Any] = {}
        self.calls: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self.loop, name=f"rekfold-tracker-{backend.name}", daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while True:
            call = self.calls.get()
            if call is None:
                return
            if self.backend.name in self.hub.failed:
                continue
            kind, folder, *args = call
            try:
                self.do(kind, folder, *args)
            except Exception as exc:  # a tracker's own failure (network, credentials, its bugs): never training's
                self.hub.say_failed(self.backend, f"{kind} {folder.name}", exc)

    def do(self, kind: str, folder: Path, *args) -> None:
        if kind == "open":
            name, params, tags = args
            with file_lock(folder / f"{TRACKER_FILE}.lock"):  # two processes starting folds of one run: one id
                ids = _read_ids(folder)
                handle, run_id = self.backend.open(name, params, tags, ids.get(self.backend.name))
                self.handles[folder] = handle
                if ids.get(self.backend.name) != run_id:
                    ids[self.backend.name] = run_id
                    with contextlib.suppress(StoreError, OSError):  # the ids only reattach; no result is lost
                        write_json_atomic(folder / TRACKER_FILE, ids)
        elif folder in self.handles:
            handle = self.handles.pop(folder) if kind == "close" else self.handles[folder]
            getattr(self.backend, kind)(handle, *args)


def _read_ids(folder: Path) -> dict[str, str]:
    path = folder / TRACKER_FILE
    if not path.exists():
        return {}
    with contextlib.suppress(StoreError, OSError):
        found = read_json(path)
        if isinstance(found, dict):
            return {str(k): str(v) for k, v in found.items()}
    return {}


def open_trackers(report_to: str, workdir: str | Path, *, log: Callable[[str], None] = print, mlflow_uri: str = "",
                  wandb_project: str = "rekfold") -> Trackers | None:
    """The Trackers of ``report_to`` (None when it names none); ConfigError when a package is missing."""
    names = check_trackers(report_to)
    if not names:
        return None
    return Trackers(names, workdir, log=log, mlflow_uri=mlflow_uri, wandb_project=wandb_project)


def trackers_for(cfg, workdir: str | Path, log: Callable[[str], None] = print) -> Trackers | None:
    """The Trackers of a config's ``report_to``, ``mlflow_uri`` and ``wandb_project`` (None when it names none)."""
    return open_trackers(cfg.report_to, workdir, log=log, mlflow_uri=cfg.mlflow_uri, wandb_project=cfg.wandb_project)
