"""--report-to: each tracker with local storage and no network, read back through its own reader (MLflow's client,
TensorBoard's event reader, W&B's offline run file); a failing or stuck tracker never changes or stops training;
a resumed run reattaches to its tracker run; a missing package is one line naming the extra."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from kfold.core.config import Config
from kfold.core.errors import ConfigError
from kfold.core.store import REFIT, load_predictions
from kfold.tracking import TRACKER_FILE, Trackers, part_metrics
from kfold.training import run_kfold

pytestmark = pytest.mark.timeout(240)


def _cfg(demo_dir, backbone, **over):
    base = dict(backbone=backbone, data=str(demo_dir / "train.tsv"), folds=2, epochs=2, average_epochs=1,
                batch_size=16, lr=1e-3, precision="fp32", threads=1, cluster="none")
    base.update(over)
    return Config(**base)


class Recorder:
    """A tracker that keeps every call (and can fail or block on request)."""

    name = "recorder"

    def __init__(self, fail: str = "", block: threading.Event | None = None):
        self.fail, self.block, self.calls, self.runs = fail, block, [], 0  # fail: the call that raises

    def open(self, name, params, tags, previous):
        self.calls.append(("open", name, previous))
        if self.fail == "open":
            raise ConnectionError("no network")
        self.runs += 1
        return name, previous or f"id-{self.runs}"

    def metrics(self, handle, values, step):
        if self.block is not None:
            self.block.wait()
        self.calls.append(("metrics", handle, dict(values), step))
        if self.fail == "metrics":
            raise PermissionError("bad credentials")

    def artifact(self, handle, path):
        self.calls.append(("artifact", handle, Path(path).name))

    def close(self, handle, failed=False):
        self.calls.append(("close", handle) + (("failed",) if failed else ()))

    def keys(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for call in self.calls:
            if call[0] == "metrics":
                for key in call[2]:
                    out.setdefault(key, []).append(call[3])
        return out


def test_part_metrics_names_every_value_by_part_and_epoch():
    record = {"history": [{"epoch": 1, "train_loss": 2.0, "seconds": 3.0, "accuracy": 40.0, "auprc": float("nan")},
                          {"epoch": 2, "train_loss": 1.5, "seconds": 3.5, "accuracy": 50.0},
                          {"epoch": "average", "averaged_epochs": [2], "accuracy": 51.0}],
              "metrics": {"accuracy": 51.0}, "wall_seconds": 9.0, "train_examples_per_s": 20.0}
    got = part_metrics(1, record)
    assert got == [({"fold1/train_loss": 2.0, "fold1/epoch_seconds": 3.0, "fold1/valid_accuracy": 40.0}, 1),
                   ({"fold1/train_loss": 1.5, "fold1/epoch_seconds": 3.5, "fold1/valid_accuracy": 50.0}, 2),
                   ({"fold1/averaged_valid_accuracy": 51.0}, 2),
                   ({"fold1/end_valid_accuracy": 51.0, "fold1/wall_seconds": 9.0, "fold1/train_rows_per_s": 20.0}, 2)]
    refit = part_metrics(REFIT, {"history": [{"epoch": 1, "train_loss": 1.0, "seconds": 2.0}], "metrics": {},
                                 "wall_seconds": 2.5, "train_examples_per_s": 30.0})
    assert [sorted(v) for v, _ in refit] == [["refit/epoch_seconds", "refit/train_loss"],
                                             ["refit/train_rows_per_s", "refit/wall_seconds"]]


@pytest.mark.parametrize("fail", ["open", "metrics"])
def test_a_failing_tracker_warns_once_changes_no_number_and_holds_no_other_back(tmp_path, demo_dir, tiny_bert, fail):
    plain = run_kfold(_cfg(demo_dir, tiny_bert), tmp_path / "plain", log=lambda m: None)
    logs: list[str] = []
    broken, other = Recorder(fail=fail), Recorder()
    other.name = "other"
    with Trackers((), tmp_path / "tracked", log=logs.append, backends=[broken, other]) as trackers:
        out = run_kfold(_cfg(demo_dir, tiny_bert), tmp_path / "tracked", log=logs.append, trackers=trackers)
    assert out.complete
    a, b = load_predictions(plain.run.oof_path), load_predictions(out.run.oof_path)
    assert np.array_equal(a.logits, b.logits)
    warnings = [line for line in logs if line.startswith("warning: tracker")]
    error = "ConnectionError: no network" if fail == "open" else "PermissionError: bad credentials"
    assert len(warnings) == 1 and warnings[0].startswith("warning: tracker recorder failed") and error in warnings[0]
    assert [c[0] for c in broken.calls] == (["open"] if fail == "open" else ["open", "metrics"])  # nothing more
    assert other.calls[-1] == ("close", out.run.name) and other.keys()["oof/accuracy"] == [0]  # the other: all


def test_a_stuck_tracker_does_not_hold_training_back(tmp_path, demo_dir, tiny_bert):
    release = threading.Event()
    stuck = Recorder(block=release)
    logs: list[str] = []
    trackers = Trackers((), tmp_path, log=logs.append, backends=[stuck])
    out = run_kfold(_cfg(demo_dir, tiny_bert), tmp_path, log=logs.append, trackers=trackers)
    assert out.complete and not any(c[0] == "metrics" for c in stuck.calls)  # trained while the tracker hung
    trackers.close(timeout=0.2)
    assert any("tracker recorder did not finish in 0.2s" in line for line in logs), logs
    release.set()


def test_each_part_logs_its_epochs_and_a_resumed_run_reattaches(tmp_path, demo_dir, tiny_bert):
    first = Recorder()
    with Trackers((), tmp_path, log=lambda m: None, backends=[first]) as trackers:
        run_kfold(_cfg(demo_dir, tiny_bert), tmp_path, folds=[0], log=lambda m: None, trackers=trackers,
                  tracker_tags={"trial": "3"})
    again = Recorder()
    with Trackers((), tmp_path, log=lambda m: None, backends=[again]) as trackers:
        out = run_kfold(_cfg(demo_dir, tiny_bert), tmp_path, folds=[1], log=lambda m: None, trackers=trackers)
    assert first.calls[0] == ("open", out.run.name, None)
    assert again.calls[0] == ("open", out.run.name, "id-1")  # the id kept in the run folder
    assert json.loads((out.run.root / TRACKER_FILE).read_text()) == {"recorder": "id-1"}
    keys = {**first.keys(), **again.keys()}
    for fold in (0, 1):
        assert keys[f"fold{fold}/train_loss"] == [1, 2] and keys[f"fold{fold}/valid_accuracy"] == [1, 2]
        record = out.run.fold_record(fold)
        sent = [c for c in first.calls + again.calls if c[0] == "metrics" and f"fold{fold}/end_valid_accuracy" in c[2]]
        assert sent[0][2][f"fold{fold}/end_valid_accuracy"] == pytest.approx(record["metrics"]["accuracy"])
    summary = json.loads(out.run.summary_path.read_text())
    oof = [c for c in again.calls if c[0] == "metrics" and "oof/accuracy" in c[2]]
    assert oof[0][2]["oof/accuracy"] == pytest.approx(summary["oof"]["accuracy"])
    assert ("artifact", out.run.name, "summary.json") in again.calls and again.calls[-1] == ("close", out.run.name)
    assert first.calls[-1] == ("close", out.run.name)  # a --fold call that ends with its folds done: not failed


def test_with_a_labelled_test_file_and_a_refit_no_test_score_reaches_a_tracker(tmp_path, demo_dir, tiny_bert):
    recorder = Recorder()
    cfg = _cfg(demo_dir, tiny_bert, test=str(demo_dir / "test_gold.tsv"), refit=True)
    with Trackers((), tmp_path, log=lambda m: None, backends=[recorder]) as trackers:
        out = run_kfold(cfg, tmp_path, log=lambda m: None, trackers=trackers)
    assert (load_predictions(out.run.test_path).y >= 0).all()  # the test file is labelled
    keys = recorder.keys()
    assert keys["refit/train_loss"] == [1, 2] and "refit/wall_seconds" in keys
    assert {k.split("/")[0] for k in keys} == {"fold0", "fold1", "refit", "oof"}
    assert not any("test" in k for k in keys)
    assert [c[2] for c in recorder.calls if c[0] == "artifact"] == ["summary.json"]
    assert "test" not in json.loads(out.run.summary_path.read_text())


def test_a_run_that_fails_closes_its_tracker_run_as_failed(tmp_path, demo_dir, tiny_bert):
    from kfold.core.errors import TrainingError

    recorder = Recorder()

    def stop(fold, record):
        raise TrainingError("stopped by the test")

    with Trackers((), tmp_path, log=lambda m: None, backends=[recorder]) as trackers:
        with pytest.raises(TrainingError):
            run_kfold(_cfg(demo_dir, tiny_bert), tmp_path, log=lambda m: None, trackers=trackers, on_fold=stop)
    assert [c for c in recorder.calls if c[0] == "close"] == [("close", recorder.calls[0][1], "failed")]


def test_a_missing_tracker_package_is_one_line_naming_the_extra_before_anything_trains(tmp_path, demo_dir, tiny_bert,
                                                                                     monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--report-to wandb: the wandb package is not installed; "
                                          r"pip install 'rekfold\[wandb\]'"):
        run_kfold(_cfg(demo_dir, tiny_bert, report_to="tensorboard,wandb"), tmp_path, log=lambda m: None)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="unknown --report-to tracker 'mlfow'"):
        Config(report_to="mlfow")


def test_mlflow_run_read_back_through_its_client(tmp_path, demo_dir, tiny_bert, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'rekfold[mlflow]')")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's local artifact store is relative to the working folder
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _cfg(demo_dir, tiny_bert, report_to="mlflow", mlflow_uri=uri)
    out = run_kfold(cfg, tmp_path / "w", log=lambda m: None)
    run_kfold(cfg, tmp_path / "w", log=lambda m: None)  # complete already: reattaches, adds no second run
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"rekfold {(tmp_path / 'w').resolve()}")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == out.run.name and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["lr"] == "0.001" and run.data.params["variant"] == "split"
    assert run.data.tags["rekfold.run"] == out.run.name
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "fold1/valid_accuracy")]
    assert steps == [1, 2]
    assert run.data.metrics["oof/accuracy"] == pytest.approx(json.loads(out.run.summary_path.read_text())["oof"]["accuracy"])
    assert "summary.json" in [f.path for f in client.list_artifacts(run.info.run_id)]
    assert json.loads((out.run.root / TRACKER_FILE).read_text()) == {"mlflow": run.info.run_id}
    # a tracker run deleted in MLflow since: the next call makes a new one instead of failing
    client.delete_run(run.info.run_id)
    logs: list[str] = []
    run_kfold(cfg, tmp_path / "w", log=logs.append)
    assert not [line for line in logs if line.startswith("warning")], logs
    new = json.loads((out.run.root / TRACKER_FILE).read_text())["mlflow"]
    assert new != run.info.run_id and client.get_run(new).info.lifecycle_stage == "active"


def test_tensorboard_run_read_back_through_its_event_reader(tmp_path, demo_dir, tiny_bert):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'rekfold[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kfold.cli import main

    assert main(["run", "--data", str(demo_dir / "train.tsv"), "--backbone", tiny_bert, "--folds", "2", "--epochs",
                 "2", "--average-epochs", "1", "--batch-size", "16", "--precision", "fp32", "--threads", "1",
                 "--cluster", "none", "--report-to", "tensorboard", "--workdir", str(tmp_path)]) == 0
    folders = list((tmp_path / "tensorboard").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("split-")
    events = EventAccumulator(str(folders[0])).Reload()
    assert [s.step for s in events.Scalars("fold0/train_loss")] == [1, 2]
    assert [s.step for s in events.Scalars("fold1/valid_accuracy")] == [1, 2]
    assert "oof/accuracy" in events.Tags()["scalars"]


def _wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (the LevelDB log format W&B writes: 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records, pending, pos = path.read_bytes(), [], b"", 7  # after the ':W&B' header
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # padding to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_wandb_offline_run_read_back_from_its_run_file(tmp_path, demo_dir, tiny_bert, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'rekfold[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logs: list[str] = []
    out = run_kfold(_cfg(demo_dir, tiny_bert, report_to="wandb"), tmp_path, log=logs.append)
    assert not [line for line in logs if line.startswith("warning")], logs
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == out.run.name and run.run_id == json.loads((out.run.root / TRACKER_FILE).read_text())["wandb"]
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["lr"] == 0.001 and config["folds"] == 2
    rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
            if r.WhichOneof("record_type") == "history"]
    fold1 = [(row["fold1/epoch"], row["fold1/valid_accuracy"]) for row in rows if "fold1/valid_accuracy" in row]
    assert [epoch for epoch, _ in fold1] == [1, 2]
    record = out.run.fold_record(1)
    assert fold1[-1][1] == pytest.approx(record["history"][1]["accuracy"])
    assert any("oof/accuracy" in row for row in rows)
    assert list(files[0].parent.glob("files/summary.json"))


def test_report_to_sends_afterwards_the_same_keys_as_the_live_run(tmp_path, demo_dir, tiny_bert):
    from kfold.core.store import list_runs
    from kfold.tracking import upload_workdir

    live = Recorder()
    with Trackers((), tmp_path, log=lambda m: None, backends=[live]) as trackers:
        run_kfold(_cfg(demo_dir, tiny_bert), tmp_path, log=lambda m: None, trackers=trackers)
    later = Recorder()
    with Trackers((), tmp_path, log=lambda m: None, backends=[later]) as trackers:
        assert upload_workdir(trackers, tmp_path, list_runs(tmp_path)) == 1
    assert later.keys() == live.keys() and later.calls[0][2] == "id-1"  # reattached to the live run's id
    values = [c[2:] for c in live.calls if c[0] == "metrics"]
    assert [c[2:] for c in later.calls if c[0] == "metrics"] == values


def test_kfold_report_to_tensorboard_sends_the_runs_and_the_page(tmp_path, demo_dir, tiny_bert, capsys):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'rekfold[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kfold.cli import main

    out = run_kfold(_cfg(demo_dir, tiny_bert), tmp_path, log=lambda m: None)
    assert main(["report", "--workdir", str(tmp_path), "--bootstrap", "50", "--to", "tensorboard"]) == 0
    assert "sent 1 run(s) and report.html to tensorboard" in capsys.readouterr().out
    events = EventAccumulator(str(tmp_path / "tensorboard" / out.run.name)).Reload()
    assert [s.step for s in events.Scalars("fold0/train_loss")] == [1, 2]
    assert "files/report.html/text_summary" in events.Tags()["tensors"]


def test_an_epochs_numbers_are_sent_as_its_line_arrives_before_the_part_is_written(tmp_path, demo_dir, tiny_bert):
    class Watching(Trackers):
        """Notes, when a fold's epoch is queued, whether that fold's completion record existed yet."""

        seen: list = []

        def metrics(self, folder, values, step):
            for key in values:
                if key.endswith("/train_loss"):
                    fold = key.split("/")[0].removeprefix("fold")
                    self.seen.append((key, step, (Path(folder) / f"fold{fold}" / "done.json").exists()))
            super().metrics(folder, values, step)

    with Watching((), tmp_path, log=lambda m: None, backends=[Recorder()]) as trackers:
        run_kfold(_cfg(demo_dir, tiny_bert), tmp_path, log=lambda m: None, trackers=trackers)
    assert Watching.seen == [(f"fold{k}/train_loss", e, False) for k in (0, 1) for e in (1, 2)]
