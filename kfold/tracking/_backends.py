"""One class per tracker, each through the library's own API, each imported only when first used (on the trackers'
thread). A tracker object holds no global "active run": every call names its run, so several are open at once.

The interface (what :class:`kfold.tracking._hub.Trackers` calls): ``open(name, params, tags, previous_id)`` returns
``(handle, run_id)`` (``previous_id``: the id kept in the run folder, to reattach to), ``metrics(handle, values,
step)``, ``artifact(handle, path)``, ``close(handle, failed)`` (``failed``: the toolkit run failed or stopped).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def make_backend(name: str, workdir: Path, mlflow_uri: str, wandb_project: str):
    """The tracker object of ``name`` (one of ``kfold.core.config.TRACKERS``)."""
    if name == "mlflow":
        return MLflowTracker(workdir, mlflow_uri)
    if name == "tensorboard":
        return TensorBoardTracker(workdir)
    return WandbTracker(workdir, wandb_project)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _prefix(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else ""


class MLflowTracker:
    """MLflow's client API with explicit run ids: one experiment per workdir (named after its absolute path), one
    MLflow run per toolkit run; the config as parameters (when the run is created), metrics with ``step`` =
    epoch, files as artifacts."""

    name = "mlflow"

    def __init__(self, workdir: Path, uri: str = ""):
        self.workdir, self.uri = workdir, uri
        self._client = None
        self._experiment: str | None = None

    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            # MLflow (configured on import) and its database migrations (alembic) log INFO lines on the terminal
            # when a store is created
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)

            self._client = MlflowClient(tracking_uri=self.uri or None)
        return self._client

    def experiment_id(self) -> str:
        if self._experiment is None:
            client, name = self.client(), f"rekfold {self.workdir}"
            found = client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiment = client.create_experiment(name, tags={"rekfold.workdir": str(self.workdir)})
                except Exception:  # another process created it between our look and our create
                    found = client.get_experiment_by_name(name)
                    if found is None:
                        raise
            if found is not None:
                self._experiment = found.experiment_id
        return self._experiment

    def open(self, name: str, params: dict, tags: dict, previous: str | None):
        from mlflow.entities import Param

        client = self.client()
        if previous:
            try:  # a run deleted since (MLflow still returns it), of another experiment or store: a new run
                found = client.get_run(previous).info
                if found.lifecycle_stage != "active" or found.experiment_id != self.experiment_id():
                    previous = None
            except Exception:
                previous = None
        if previous:
            client.update_run(previous, status="RUNNING")
            return previous, previous
        run = client.create_run(self.experiment_id(), run_name=name,
                                tags={"rekfold.run": name, "rekfold.workdir": str(self.workdir), **tags})
        items = [Param(k, _text(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            client.log_batch(run.info.run_id, params=items[start:start + 100])
        return run.info.run_id, run.info.run_id

    def metrics(self, run_id: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client().log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in values.items()])

    def artifact(self, run_id: str, path: Path) -> None:
        self.client().log_artifact(run_id, str(path))

    def close(self, run_id: str, failed: bool = False) -> None:
        self.client().set_terminated(run_id, "FAILED" if failed else "FINISHED")


class TensorBoardTracker:
    """One TensorBoard folder per toolkit run, ``<workdir>/tensorboard/<run>``: scalars with ``step`` = epoch, the
    config and attached files as text (TensorBoard keeps no files). ``tensorboard --logdir <workdir>/tensorboard``
    shows every run of the workdir."""

    name = "tensorboard"

    def __init__(self, workdir: Path):
        self.root = workdir / "tensorboard"

    def open(self, name: str, params: dict, tags: dict, previous: str | None):
        from torch.utils.tensorboard import SummaryWriter

        folder = self.root / name
        writer = SummaryWriter(log_dir=str(folder))
        if not previous:
            rows = "\n".join(f"| {k} | {_text(v)} |" for k, v in sorted({**params, **tags}.items()))
            writer.add_text("config", "| key | value |\n|---|---|\n" + rows)
        return writer, str(folder)

    def metrics(self, writer, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            writer.add_scalar(key, float(value), step)
        writer.flush()

    def artifact(self, writer, path: Path) -> None:
        text = path.read_text(encoding="utf-8", errors="replace") if path.suffix == ".json" else str(path.resolve())
        writer.add_text(f"files/{path.name}", f"```\n{text[:20000]}\n```" if path.suffix == ".json" else text)
        writer.flush()

    def close(self, writer, failed: bool = False) -> None:
        writer.close()


class WandbTracker:
    """Weights & Biases with ``reinit="create_new"`` (several runs open at once, no global run): one W&B run per
    toolkit run in ``project``, grouped by the workdir, files under ``<workdir>/wandb``; resumed by id. W&B wants
    one increasing step per run, so each prefix (``fold0``, ``refit``, ``oof``) gets its own x-axis,
    ``<prefix>/epoch`` (``define_metric``)."""

    name = "wandb"

    def __init__(self, workdir: Path, project: str):
        self.workdir, self.project = workdir, project or "rekfold"
        self.axes: dict[int, set[str]] = defaultdict(set)

    def open(self, name: str, params: dict, tags: dict, previous: str | None):
        import wandb

        self.workdir.mkdir(parents=True, exist_ok=True)
        # the run's name and group already say the run and workdir; W&B takes tags of at most 64 characters and
        # groups of at most 128
        extra = [f"{k}={v}"[:64] for k, v in tags.items() if k not in ("rekfold.run", "rekfold.workdir")]
        run = wandb.init(project=self.project, group=str(self.workdir)[-128:], name=name, id=previous or None,
                         resume="allow" if previous else None, config=None if previous else params,
                         dir=str(self.workdir), reinit="create_new", tags=extra or None,
                         settings=wandb.Settings(console="off", silent=True, save_code=False, disable_git=True))
        return run, run.id

    def metrics(self, run, values: dict[str, float], step: int) -> None:
        by_axis: dict[str, dict[str, float]] = defaultdict(dict)
        for key, value in values.items():
            by_axis[_prefix(key)][key] = float(value)
        for prefix, group in by_axis.items():
            axis = f"{prefix}/epoch" if prefix else "epoch"
            if axis not in self.axes[id(run)]:
                run.define_metric(axis)
                run.define_metric(f"{prefix}/*" if prefix else "*", step_metric=axis)
                self.axes[id(run)].add(axis)
            run.log({**group, axis: step})

    def artifact(self, run, path: Path) -> None:
        # a copy in the run's folder: W&B would symlink a file outside it (and warn), and sync it as it is then
        copy = Path(run.dir) / path.name
        shutil.copyfile(path, copy)
        run.save(str(copy), base_path=run.dir, policy="now")

    def close(self, run, failed: bool = False) -> None:
        self.axes.pop(id(run), None)
        run.finish(exit_code=1 if failed else 0)
