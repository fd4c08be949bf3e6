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
    # cluster none: about learning, not where parts train (--cluster auto would time both arrangements first)
    cfg = Config(data=str(tmp_path / "data" / "train.jsonl"), marker="typed_entity_marker_punct", folds=2, epochs=1,
                 batch_size=16, max_len=192, lr=1e-4, cluster="none")
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
    cfg = Config(data=str(train), test=str(tmp_path / "demo" / "test.tsv"), folds=2, epochs=5, lr=2e-4, batch_size=16,
                 cluster="none")
    out = run_kfold(cfg, tmp_path / "w", log=lambda m: None)
    assert out.complete
    # 200 training rows per fold, 5 epochs: measured 71.5 against a majority of 44.75
    assert out.oof_scores["accuracy"] > out.majority_accuracy + 20, (out.oof_scores, out.majority_accuracy)


def test_competition_file_with_its_real_faults_is_repaired_marked_and_trains(tmp_path, capsys):
    """The source competition's faults, on real KLUE rows: 24 spans shifted right (15 by 2, 9 by 1; 3 on text that
    occurs twice), 3 rows whose subject and object overlap (2 crossing, 1 nested), and one row that no rule can
    repair. check-data repairs the 24, marks the 3 and refuses only the broken row, naming --bad-rows skip; with
    it, exit 0; strict refuses the 24 too; kfold run trains on a part holding all of those rows."""
    import csv

    from kfold.cli import main
    from tests.dirty import write_dirty_competition_file

    folder = shared_data("klue_re_subset")
    info = write_dirty_competition_file(folder / "train_subset.jsonl", tmp_path / "data", n_rows=300,
                                        overlaps=("crossing", "crossing", "nested"), broken=1)
    moves = [given - true for _, _, true, given in info["shifted"]]
    assert len(moves) == 24 and moves.count(2) == 15 and moves.count(1) == 9
    data = str(tmp_path / "data" / "train.tsv")
    work = tmp_path / "w"
    assert main(["check-data", data, "--workdir", str(work), "--max-len", "128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"row {info['broken'][0]}, field 'subject word'" in err[0]
    assert err[0].endswith(f"; 1 row cannot be repaired; --bad-rows skip trains without it (listed in "
                           f"{err[0].split('(listed in ')[1]}") and "skipped-train-" in err[0]
    assert main(["check-data", data, "--workdir", str(work), "--max-len", "128", "--bad-rows", "skip"]) == 0
    out = capsys.readouterr().out
    assert "warning: repaired 24 entity spans in train.tsv, moved 1-2 characters" in out
    assert "note: 3 rows of train.tsv have overlapping subject and object spans (2 crossing, 1 nested)" in out
    assert "warning: left out 1 training row of train.tsv that cannot be repaired (--bad-rows skip)" in out
    assert f"{data}: no problems in the {info['rows'] - 1} rows kept (1 left out by --bad-rows skip)" in out
    listed = next((work / "data").glob("repairs-train-*.csv"))
    rows = {(int(r["row"]), r["field"], int(r["old_start"]), int(r["new_start"]))
            for r in csv.DictReader(listed.open(encoding="utf-8"))}
    assert rows == {(row, field, given, true) for row, field, true, given in info["shifted"]}
    overlaps = {(int(r["row"]), r["kind"]) for r in csv.DictReader(next((work / "data").glob("overlaps-train-*.csv")).open(encoding="utf-8"))}
    assert overlaps == set(info["overlaps"])
    assert main(["check-data", data, "--offsets", "strict", "--no-tokens"]) == 2
    assert capsys.readouterr().err.startswith("kfold: error: 25 problems in 24 rows of")
    # a part of the file: the first 80 rows and every faulty row further on
    lines = (tmp_path / "data" / "train.tsv").read_text(encoding="utf-8").splitlines(True)
    special = {row for row, *_ in info["shifted"]} | {row for row, _ in info["overlaps"]} | set(info["broken"])
    part = [line for row, line in enumerate(lines, start=1) if row <= 80 or row in special]
    small = tmp_path / "data" / "small.tsv"
    small.write_text("".join(part), encoding="utf-8")
    assert main(["run", "--data", str(small), "--workdir", str(work), "--folds", "2", "--epochs", "1", "--max-len", "128",
                 "--cluster", "none",
                 "--batch-size", "16", "--variants", "split", "--bad-rows", "skip"]) == 0
    out = capsys.readouterr().out
    assert "warning: repaired 24 entity spans in small.tsv" in out and "note: 3 rows of small.tsv have overlapping" in out
    assert "warning: left out 1 training row of small.tsv" in out and ": OOF accuracy" in out
