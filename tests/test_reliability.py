"""Crash safety of leaderboard files, full and read-only disks, unseen test labels, unusual valid input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from ensemble.cli import main as ensemble_main
from kfold.cli import main as kfold_main
from kfold.core.config import Config
from kfold.core.errors import DataError
from kfold.data._load import load_data
from kfold.data._readers import read_dataset
from submissions import check_submission
from tests.fakes import fake_run

NAMES = ("no_relation", "a", "b")


def _big_store(workdir, n_test=150_000):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    for name in ("m1", "m2"):
        fake_run(workdir, name, rng.normal(size=(300, 3)), y, np.arange(300) % 3, NAMES, rng.normal(size=(n_test, 3)))
    return [f"t{i}" for i in range(n_test)]


def test_blend_killed_while_writing_leaves_the_previous_submission_intact(tmp_path):
    ids = _big_store(tmp_path)
    out = tmp_path / "sub.csv"
    base = [sys.executable, "-m", "ensemble.cli", "blend", "--workdir", str(tmp_path), "--format", "klue", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run(base + ["--method", "soft"], check=True, env=env, capture_output=True, timeout=300)
    previous = out.read_bytes()
    rng = np.random.default_rng(1)
    for _ in range(4):
        proc = subprocess.Popen(base + ["--method", "hard", "--force"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.5, 3.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        current = out.read_bytes()
        assert check_submission(out, "klue", ids, NAMES) == len(ids)  # never a half-written file
        if current != previous:  # the kill came after the rename: the new file is complete
            previous = current
    assert json.loads((tmp_path / "sub.csv.manifest.json").read_text())["method"] in ("soft", "hard")


def _mount_tmpfs(path, options):
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to make a small or read-only file system")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"rekfold-{uuid.uuid4().hex[:6]}", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def _umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_disk_gives_a_clear_error_and_keeps_the_old_file(tmp_path, capsys):
    ids = _big_store(tmp_path / "store", n_test=20_000)
    small = tmp_path / "small"
    _mount_tmpfs(small, "size=256k")
    try:
        out = small / "sub.csv"
        out.write_text("old\n")
        status = ensemble_main(["blend", "--workdir", str(tmp_path / "store"), "--format", "klue", "--out", str(out), "--force"])
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1, err
        assert "sub.csv: cannot write: No space left on device" in err
        assert out.read_text() == "old\n"
        assert [p.name for p in small.iterdir()] == ["sub.csv"]  # the partial temporary file was removed
    finally:
        _umount(small)
    assert len(ids) == 20_000


def test_read_only_workdir_gives_a_clear_error(tmp_path, demo_dir, capsys):
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=64k")
    try:
        status = kfold_main(["run", "--workdir", str(ro), "--data", str(demo_dir / "train.tsv"), "--folds", "2"])
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1, err
        assert "cannot write: Read-only file system" in err
    finally:
        _umount(ro)


def test_label_in_test_file_but_not_in_training_is_refused(tmp_path):
    import pickle

    (tmp_path / "label_type.pkl").write_bytes(pickle.dumps({"관계_없음": 0, "인물:소속단체": 1, "단체:설립자": 2}))
    (tmp_path / "train.tsv").write_text("1\tKim works at Acme.\tKim\t0\t2\tAcme\t13\t16\t인물:소속단체\n"
                                        "2\tLee met Kim.\tLee\t0\t2\tKim\t8\t10\t관계_없음\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("9\tAcme was set up by Kim.\tAcme\t0\t3\tKim\t19\t21\t단체:설립자\n", encoding="utf-8")
    cfg = Config(data=str(tmp_path / "train.tsv"), test=str(tmp_path / "test.tsv"))
    with pytest.raises(DataError, match=r"test\.tsv: row 1, field 'label': found '단체:설립자', expected a label that "
                                        r"occurs in the training data"):
        load_data(cfg, tmp_path, log=lambda m: None)


def test_klue_jsonl_with_bom_crlf_and_blank_lines(tmp_path):
    (tmp_path / "relation_list.json").write_text(json.dumps({"relations": ["no_relation", "org:founded_by"]}))
    item = {"guid": "g1", "sentence": "\u201cAcme\u201d was founded by Kim.",
            "subject_entity": {"word": "Acme", "start_idx": 1, "end_idx": 4, "type": "ORG"},
            "object_entity": {"word": "Kim", "start_idx": 22, "end_idx": 24, "type": "PER"}, "label": 1}
    body = json.dumps(item, ensure_ascii=False) + "\r\n\r\n" + json.dumps(dict(item, guid="g2")) + "\r\n\r\n\r\n"
    (tmp_path / "t.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    ds = read_dataset(tmp_path / "t.jsonl")
    assert [ex.id for ex in ds.examples] == ["g1", "g2"]
    assert ds.examples[0].subj_text == "Acme" and ds.examples[1].obj_text == "Kim"
