"""Overlapping spans are read and listed (not refused); ``--bad-rows skip`` leaves out the training rows that cannot
be repaired, lists them, and makes them other data; a test file never loses a row."""

from __future__ import annotations

import csv
import json
import pickle

import pytest

from kfold.cli import main as kfold_main
from kfold.core.errors import DataProblems
from kfold.data import read_dataset

LABELS = {"관계_없음": 0, "인물:소속단체": 1, "단체:설립자": 2}


def _row(rid, sentence, subj, s, obj, o, label="관계_없음"):
    """A competition row (inclusive ends) with the entity texts at the given starts."""
    return f"{rid}\t{sentence}\t{subj}\t{s}\t{s + len(subj) - 1}\t{obj}\t{o}\t{o + len(obj) - 1}\t{label}\n"


GOOD = [_row(f"g{i}", f"김철수{i}는 삼성에서 일했다.", f"김철수{i}", 0, "삼성", 6, "인물:소속단체") for i in range(6)]
# the source competition's three overlapping rows, as they read there
OVERLAPS = [_row("o1", "그는 전 세계은행 총재였다.", "세계은행", 5, "전 세계", 3),  # crossing
            _row("o2", "아돌프 히틀러 내각이 출범했다.", "아돌프 히틀러", 0, "히틀러 내각", 4),  # crossing
            _row("o3", "위그 카페가 왕이 되었다.", "카페가", 3, "위그 카페", 0),  # crossing
            _row("o4", "삼성전자 직원이 왔다.", "삼성전자", 0, "삼성", 0),  # nested
            _row("o5", "삼성 직원이 왔다.", "삼성", 0, "삼성", 0)]  # identical


def _write(folder, rows, name="train.tsv"):
    (folder / "label_type.pkl").write_bytes(pickle.dumps(LABELS))
    (folder / name).write_text("".join(rows), encoding="utf-8")
    return folder / name


def test_overlapping_spans_are_kept_listed_and_counted(tmp_path, capsys):
    path = _write(tmp_path, GOOD + OVERLAPS)
    ds = read_dataset(path)
    assert len(ds) == 11 and [(o.id, o.kind) for o in ds.overlaps] == [
        ("o1", "crossing"), ("o2", "crossing"), ("o3", "crossing"), ("o4", "nested"), ("o5", "identical")]
    assert ds.overlaps[0].subject == (5, 9) and ds.overlaps[0].object == (3, 7)
    assert kfold_main(["check-data", str(path), "--workdir", str(tmp_path / "w"), "--no-tokens"]) == 0
    out = capsys.readouterr().out.splitlines()
    note = next(i for i, line in enumerate(out) if line.startswith("note: 5 rows of train.tsv have overlapping"))
    assert "(3 crossing, 1 nested, 1 identical)" in out[note]
    assert out[note + 1] == "  row 7 (id o1), crossing: subject '세계은행' [5, 9), object '전 세계' [3, 7)"
    assert out[-1] == f"{path}: no problems"
    listed = list(csv.DictReader(next((tmp_path / "w" / "data").glob("overlaps-train-*.csv")).open(encoding="utf-8")))
    assert [(r["id"], r["kind"], r["subject"], r["object"]) for r in listed][:2] == [
        ("o1", "crossing", "세계은행", "전 세계"), ("o2", "crossing", "아돌프 히틀러", "히틀러 내각")]
    # --overlap error refuses them, every one listed
    assert kfold_main(["check-data", str(path), "--overlap", "error", "--no-tokens"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("5 problems in 5 rows of " + str(path) + ": 5 overlapping entities")


def test_entity_mask_refuses_overlapping_rows_and_skip_gets_past_them_in_training_only(tmp_path, capsys):
    path = _write(tmp_path, GOOD + OVERLAPS[:1])
    with pytest.raises(DataProblems, match=r"row 7, field 'object'.*crossing with subject.*entity_mask replaces"):
        read_dataset(path, marker="entity_mask")
    ds = read_dataset(path, marker="entity_mask", bad_rows="skip")
    assert len(ds) == 6 and [(s.row, s.id, s.kind) for s in ds.skipped] == [(7, "o1", "overlapping entities under entity_mask")]
    test = _write(tmp_path, OVERLAPS[:1], "test.tsv")
    with pytest.raises(DataProblems, match="entity_mask"):
        read_dataset(test, role="test", marker="entity_mask", bad_rows="skip")  # a test row is never left out


BROKEN = [_row("b1", "이영희는 회사에 갔다.", "김철수", 0, "회사", 5),  # entity text absent
          _row("b2", "박영수는 삼성에 갔다.", "박영수", 0, "삼성", 5, "인물:소속"),  # unknown label
          _row("g0", "김철수는 엘지에서 일했다.", "김철수", 0, "엘지", 5),  # duplicates the id of the first good row
          "b4\t문장\t셋\n"]  # 3 columns


def test_bad_rows_skip_leaves_out_every_row_that_cannot_be_repaired_and_lists_it(tmp_path, capsys):
    path = _write(tmp_path, GOOD + BROKEN)
    work = tmp_path / "w"
    assert kfold_main(["check-data", str(path), "--workdir", str(work), "--no-tokens"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("5 rows cannot be repaired; --bad-rows skip trains without them (listed in "
                              f"{work / 'data' / 'skipped-train-'}")
    assert kfold_main(["check-data", str(path), "--workdir", str(work), "--no-tokens", "--bad-rows", "skip"]) == 0
    out = capsys.readouterr().out.splitlines()
    warning = next(line for line in out if line.startswith("warning: left out"))
    assert warning.startswith("warning: left out 5 training rows of train.tsv that cannot be repaired (--bad-rows skip); "
                              f"list in {work / 'data' / 'skipped-train-'}")
    assert out[-1] == f"{path}: no problems in the 5 rows kept (5 left out by --bad-rows skip)"
    listed = list(csv.DictReader(next((work / "data").glob("skipped-train-*.csv")).open(encoding="utf-8")))
    # the duplicated id: both of its rows (the first one too, since nothing says which is right)
    assert sorted((int(r["row"]), r["id"], r["field"], r["kind"]) for r in listed) == [
        (1, "g0", "id", "duplicate id"), (7, "b1", "subject word", "offsets"), (8, "b2", "label", "unknown label"),
        (9, "g0", "id", "duplicate id"), (10, "", "", "format")]
    assert all(r["problem"].startswith(f"{path}: row {r['row']}") for r in listed)
    # what was kept is the data: a clean file of exactly those rows has the same content hash
    kept = read_dataset(path, bad_rows="skip")
    (tmp_path / "clean").mkdir()
    clean = _write(tmp_path / "clean", GOOD[1:])
    assert kept.content_hash() == read_dataset(clean).content_hash() and len(kept) == 5


def test_file_problems_and_test_files_are_never_skipped(tmp_path, capsys):
    path = _write(tmp_path, GOOD + ['q1\t"열린 따옴표\t김\t0\t0\t삼성\t1\t2\t관계_없음\n'])
    with pytest.raises(DataProblems, match="a double quote opened on this row, never closed"):
        read_dataset(path, bad_rows="skip")
    test = _write(tmp_path, GOOD[:2] + BROKEN[1:2], "test.tsv")
    train = _write(tmp_path, GOOD)
    assert kfold_main(["run", "--data", str(train), "--test", str(test), "--workdir", str(tmp_path / "w"),
                       "--bad-rows", "skip"]) == 2
    err = capsys.readouterr().err
    assert "test.tsv: row 3, field 'label'" in err and "cannot be repaired" not in err


def test_skip_is_other_data_resume_and_blend_say_why(tmp_path, tiny_bert, capsys):
    from ensemble.cli import main as ensemble_main

    dirty = _write(tmp_path, [r.replace("g", "a") for r in GOOD] + GOOD + BROKEN[:2])
    work = str(tmp_path / "w")
    common = ["--workdir", work, "--backbone", tiny_bert, "--folds", "2", "--epochs", "1", "--lr", "1e-3"]
    assert kfold_main(["run", "--data", str(dirty), "--bad-rows", "skip", "--variants", "split"] + common) == 0
    out = capsys.readouterr().out
    assert "warning: left out 2 training rows of train.tsv that cannot be repaired (--bad-rows skip)" in out
    run = next((tmp_path / "w" / "runs").glob("split-*"))
    config, data = (json.loads((run / f).read_text(encoding="utf-8")) for f in ("config.json", "data.json"))
    assert config["skipped_rows"] == 2 and data["skipped_rows"] == 2 and data["skipped_csv"].endswith(".csv")
    # the two rows fixed by hand: more rows, other data; resuming the run says why
    fixed = _write(tmp_path, [r.replace("g", "a") for r in GOOD] + GOOD + [_row("b1", "이영희는 회사에 갔다.", "이영희", 0, "회사", 5),
                                                                           _row("b2", "박영수는 삼성에 갔다.", "박영수", 0, "삼성", 5)])
    assert kfold_main(["run", "--data", str(fixed), "--variants", "split"] + common) == 2
    err = capsys.readouterr().err
    assert "field 'data_hash': the run was made with other data (0 training rows left out by --bad-rows skip now, " \
           "2 when the run was made)" in err
    assert kfold_main(["run", "--data", str(fixed), "--variants", "share"] + common) == 0
    capsys.readouterr()
    assert ensemble_main(["compare", "--workdir", work]) == 2
    err = capsys.readouterr().err
    assert "members must share one fold map; 'share-" in err and "left out by --bad-rows skip, so they hold other data" in err
