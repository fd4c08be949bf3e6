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
from pathlib import Path
from typing import Any, Callable

from kfold.core.config import TRACKERS, tracker_names
from kfold.core.errors import ConfigError, StoreError, unknown_name
from kfold.core.textio import read_json, write_json_atomic

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
        self.opened: set[Path] = set()  # the caller's side: runs opened and not closed (the thread may lag behind)
        self.handles: dict[Path, dict[str, Any]] = {}
        self.calls: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="rekfold-trackers", daemon=True)
        self.thread.start()

    def __bool__(self) -> bool:
        return bool(self.backends)

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what the driver calls: each returns at once -------------------------------------------------------------
    def open_run(self, folder: Path, name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        """Start (or reattach to) the tracker run of the toolkit run in ``folder``, with its config as parameters."""
        self.opened.add(Path(folder))
        self.calls.put((self._open, (Path(folder), name, dict(params), dict(tags or {}))))

    def metrics(self, folder: Path, values: dict[str, float], step: int) -> None:
        """Log ``values`` at ``step`` (an epoch) in the run's tracker run."""
        if values:
            self.calls.put((self._each, (Path(folder), "metrics", dict(values), int(step))))

    def artifact(self, folder: Path, path: Path) -> None:
        """Attach a file (summary.json, report.html)."""
        self.calls.put((self._each, (Path(folder), "artifact", Path(path))))

    def close_run(self, folder: Path) -> None:
        """Finish the run's tracker run (a later ``open_run`` of the same folder reattaches to it)."""
        self.opened.discard(Path(folder))
        self.calls.put((self._close, (Path(folder),)))

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Close every open tracker run and wait (at most ``timeout`` seconds) for the queued calls."""
        if not self.thread.is_alive():
            return
        for folder in list(self.opened):
            self.close_run(folder)
        self.calls.put(None)
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.log(f"warning: the trackers did not finish in {timeout:.0f}s; what was not sent yet is dropped "
                     "(the run store has all of it: `kfold report --to` sends it again)")

    # -- the background thread -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            call = self.calls.get()
            if call is None:
                return
            fn, args = call
            fn(*args)

    def _guarded(self, backend, what: str, fn: Callable[[], Any]) -> Any:
        """Run one tracker call; the first failure of a tracker is said once and turns that tracker off."""
        if backend.name in self.failed:
            return None
        try:
            return fn()
        except Exception as exc:  # a tracker's own failure (network, credentials, its bugs): never training's
            self.failed.add(backend.name)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.log(f"warning: tracker {backend.name} failed ({what}: {type(exc).__name__}: {text}); nothing more "
                     "is sent to it in this command, training goes on")
            return None

    def _open(self, folder: Path, name: str, params: dict, tags: dict) -> None:
        ids = _read_ids(folder)
        handles = self.handles.setdefault(folder, {})
        changed = False
        for backend in self.backends:
            previous = ids.get(backend.name)
            opened = self._guarded(backend, f"opening {name}",
                                   lambda b=backend, p=previous: b.open(name, params, tags, p))
            if opened is not None:
                handles[backend.name], run_id = opened
                changed |= ids.get(backend.name) != run_id
                ids[backend.name] = run_id
        if changed:
            with contextlib.suppress(StoreError, OSError):  # the ids only reattach; losing them loses no result
                write_json_atomic(folder / TRACKER_FILE, ids)

    def _each(self, folder: Path, method: str, *args) -> None:
        handles = self.handles.get(folder, {})
        for backend in self.backends:
            if backend.name in handles:
                self._guarded(backend, method, lambda b=backend: getattr(b, method)(handles[b.name], *args))

    def _close(self, folder: Path) -> None:
        handles = self.handles.pop(folder, {})
        for backend in self.backends:
            if backend.name in handles:
                self._guarded(backend, "closing", lambda b=backend: b.close(handles[b.name]))


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
