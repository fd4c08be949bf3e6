"""Real data (../shared/data) and the packaged MiniLM: readers, loading without random weights, a short run."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from kfold.data._readers import read_dataset
from tests.conftest import shared_data

pytestmark = pytest.mark.slow


def test_semeval_files_read_completely():
    folder = shared_data("semeval2010_task8")
    train = read_dataset(folder / "train.tsv", folder / "label.txt")
    test = read_dataset(folder / "test.tsv", train.label_names, role="test", id_start=8001)
    assert (len(train), len(test), len(train.label_names)) == (8000, 2717, 19)
    assert train.label_names[0] == "Other" and test.examples[0].id == "8001"
    assert all(ex.subj_text and ex.obj_text and "<e" not in ex.sentence for ex in train.examples)


def test_klue_subset_reads_with_types_and_offsets():
    folder = shared_data("klue_re_subset")
    ds = read_dataset(folder / "train_subset.jsonl")
    raw = [json.loads(line) for line in (folder / "train_subset.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(ds) == len(raw) == 3247 and len(ds.label_names) == 30 and ds.has_types
    for ex, r in zip(ds.examples[:500], raw[:500]):
        assert ex.subj_text == r["subject_entity"]["word"] and ex.obj_text == r["object_entity"]["word"]
        assert ds.label_names[r["label"]] == ex.label


def test_packaged_minilm_loads_without_random_weights(caplog):
    from kfold.model._models import load_backbone

    with caplog.at_level(logging.WARNING):
        model, has_pooler = load_backbone("minilm", want_pooler=True)
    assert has_pooler and model.config.hidden_size == 384
    text = caplog.text.lower()
    assert "newly initialized" not in text and "missing" not in text


def test_short_kfold_run_on_a_klue_sample_with_minilm(tmp_path):
    from kfold.core.config import Config
    from kfold.core.store import load_predictions
    from kfold.training._runner import run_kfold

    folder = shared_data("klue_re_subset")
    lines = (folder / "train_subset.jsonl").read_text(encoding="utf-8").splitlines()
    keep = [json.loads(line) for line in lines]
    # short sentences: the uncased WordPiece splits Korean into jamo, about 3 tokens per syllable
    keep = [r for r in keep if r["label_name"] in ("no_relation", "org:top_members/employees", "per:employee_of")
            and len(r["sentence"]) < 60][:90]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in keep), encoding="utf-8")
    (tmp_path / "data" / "relation_list.json").write_text((folder / "relation_list.json").read_text(encoding="utf-8"))
    cfg = Config(data=str(tmp_path / "data" / "train.jsonl"), marker="typed_entity_marker_punct", folds=2, epochs=1,
                 batch_size=16, max_len=192, lr=1e-4)
    out = run_kfold(cfg, tmp_path / "w", log=lambda m: None)
    assert out.complete
    oof = load_predictions(out.run.oof_path)
    assert len(oof.ids) == 90 and np.isfinite(oof.logits).all() and oof.logits.shape[1] == 30


def test_demo_data_is_learned_well_above_the_majority_class(tmp_path):
    """The embedded default (generated demo data + packaged MiniLM) must learn: OOF accuracy far above majority."""
    from kfold.core.config import Config
    from kfold.data._demo import write_demo_data
    from kfold.training._runner import run_kfold

    train = write_demo_data(tmp_path / "demo", n_train=400, n_test=20, seed=11)
    cfg = Config(data=str(train), test=str(tmp_path / "demo" / "test.tsv"), folds=2, epochs=5, lr=2e-4, batch_size=16)
    out = run_kfold(cfg, tmp_path / "w", log=lambda m: None)
    assert out.complete
    # 200 training rows per fold, 5 epochs: measured 71.5 against a majority of 44.75
    assert out.oof_scores["accuracy"] > out.majority_accuracy + 20, (out.oof_scores, out.majority_accuracy)


def test_competition_file_with_24_shifted_spans_is_repaired_and_trains(tmp_path, capsys):
    """The source competition's fault, on real KLUE rows: 24 spans shifted right (15 by 2, 9 by 1; 3 on text
    that occurs twice). check-data repairs all 24 and exits 0; strict refuses all 24; kfold run trains on it."""
    import csv

    from kfold.cli import main
    from tests.dirty import write_dirty_competition_file

    folder = shared_data("klue_re_subset")
    info = write_dirty_competition_file(folder / "train_subset.jsonl", tmp_path / "data", n_rows=300)
    moves = [given - true for _, _, true, given in info["shifted"]]
    assert len(moves) == 24 and moves.count(2) == 15 and moves.count(1) == 9
    data = str(tmp_path / "data" / "train.tsv")
    assert main(["check-data", data, "--workdir", str(tmp_path / "w"), "--max-len", "128"]) == 0
    out = capsys.readouterr().out
    assert "warning: repaired 24 entity spans in train.tsv, moved 1-2 characters" in out
    assert f"{data}: no problems" in out and "two windows)" in out
    listed = next((tmp_path / "w" / "data").glob("repairs-train-*.csv"))
    rows = {(int(r["row"]), r["field"], int(r["old_start"]), int(r["new_start"]))
            for r in csv.DictReader(listed.open(encoding="utf-8"))}
    assert rows == {(row, field, given, true) for row, field, true, given in info["shifted"]}
    assert main(["check-data", data, "--offsets", "strict", "--no-tokens"]) == 2
    assert capsys.readouterr().err.startswith("kfold: error: 24 problems in 23 rows of")
    small = tmp_path / "data" / "small.tsv"  # the first 120 rows, with the shifted spans among them
    small.write_text("".join((tmp_path / "data" / "train.tsv").read_text(encoding="utf-8").splitlines(True)[:120]),
                     encoding="utf-8")
    assert main(["run", "--data", str(small), "--workdir", str(tmp_path / "w"), "--folds", "2", "--epochs", "1",
                 "--max-len", "128", "--batch-size", "16", "--variants", "split"]) == 0
    out = capsys.readouterr().out
    n_small = sum(row <= 120 for row, *_ in info["shifted"])
    assert n_small >= 10 and f"warning: repaired {n_small} entity spans in small.tsv" in out and ": OOF accuracy" in out
