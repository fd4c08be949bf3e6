"""Dirty competition files: offset repair by nearest occurrence, every problem listed at once, repaired data as
the run's identity, and rows whose entities lie too far apart for one window."""

from __future__ import annotations

import csv
import json
import pickle
import re

import numpy as np
import pytest
import torch

from kfold.cli import main as kfold_main
from kfold.core.errors import DataProblems
from kfold.data._readers import read_dataset
from kfold.data._schema import Dataset, Example, Span
from kfold.data._validate import nearest_occurrence
from kfold.encoding._encode import ONE_WINDOW, TWO_WINDOWS, WHOLE, encode
from tests.tiny import KINDS, tiny_tokenizer

LABELS = {"관계_없음": 0, "인물:소속단체": 1, "단체:설립자": 2}
SENT = "오늘 김철수는 삼성에서 일했다."  # 김철수 at 3..5, 삼성 at 8..9 (inclusive)


def _tsv_row(rid, sentence, subj, s, obj, o, label="인물:소속단체"):
    """A competition row with inclusive ends; s / o are the given starts (possibly wrong)."""
    return f"{rid}\t{sentence}\t{subj}\t{s}\t{s + len(subj) - 1}\t{obj}\t{o}\t{o + len(obj) - 1}\t{label}\n"


def _write(folder, rows, name="train.tsv"):
    (folder / "label_type.pkl").write_bytes(pickle.dumps(LABELS))
    path = folder / name
    path.write_text("".join(rows), encoding="utf-8")
    return path


def test_nearest_occurrence_rule():
    assert nearest_occurrence("ab Kim cd", "Kim", 5, 5) == (3, "")
    assert nearest_occurrence("Kim and Kim", "Kim", 2, 5) == (0, "")  # nearer to the first
    pos, why = nearest_occurrence("Kim Kim", "Kim", 2, 5)  # 0 and 4 both 2 away
    assert pos is None and "equally near" in why
    pos, why = nearest_occurrence("x" * 20 + "Kim", "Kim", 2, 5)
    assert pos is None and "18 characters away, more than --repair-window 5" in why
    assert nearest_occurrence("no name here", "Kim", 0, 5)[1] == "the text does not occur in the sentence"


def test_competition_shifts_by_one_and_two_are_repaired_and_listed(tmp_path, capsys):
    twice = "김철수는 말했다. 오늘 김철수는 삼성에서 일했다."  # 김철수 at 0 and 13; truth 13, given 15
    path = _write(tmp_path, [
        _tsv_row(1, SENT, "김철수", 4, "삼성", 8),  # subject shifted right by 1
        _tsv_row(2, SENT, "김철수", 3, "삼성", 10),  # object shifted right by 2
        _tsv_row(3, twice, "김철수", 15, "삼성", 18),  # text twice, the nearest occurrence is right
        _tsv_row(4, SENT, "김철수", 3, "삼성", 8),  # clean
    ])
    ds = read_dataset(path)
    assert [(ex.subj_text, ex.obj_text) for ex in ds.examples] == [("김철수", "삼성")] * 4
    assert twice.index("김철수", 1) == 13 and twice.index("삼성") == 18 and ds.examples[2].subj.start == 13
    assert [(r.row, r.field, r.old, r.new) for r in ds.repairs] == [
        (1, "subject", (4, 6), (3, 5)), (2, "object", (10, 11), (8, 9)), (3, "subject", (15, 17), (13, 15))]
    # check-data says so in one warning line and lists them in the workdir
    assert kfold_main(["check-data", str(path), "--workdir", str(tmp_path / "w"), "--no-tokens"]) == 0
    out = capsys.readouterr().out
    assert "warning: repaired 3 entity spans in train.tsv, moved 1-2 characters; list in" in out
    listed = list((tmp_path / "w" / "data").glob("repairs-train-*.csv"))
    assert len(listed) == 1
    rows = list(csv.DictReader(listed[0].open(encoding="utf-8")))
    assert [(r["row"], r["id"], r["field"], r["text"], r["old_start"], r["new_start"], r["moved"]) for r in rows] == [
        ("1", "1", "subject", "김철수", "4", "3", "-1"), ("2", "2", "object", "삼성", "10", "8", "-2"),
        ("3", "3", "subject", "김철수", "15", "13", "-2")]
    assert str(path) == rows[0]["file"] and rows[0]["old_end"] == "6" and rows[0]["new_end"] == "5"


def test_unrepairable_spans_are_errors_each_with_its_reason(tmp_path):
    clean = "김철수와 김철수는 달랐다. 삼성"
    path = _write(tmp_path, [
        _tsv_row(1, "김 김철수 x 김철수 삼성", "김철수", 5, "삼성", 12),  # occurrences at 2 and 8, given 5: a tie
        _tsv_row(2, SENT, "이영희", 3, "삼성", 8),  # text absent
        _tsv_row(3, "김철수" + " 가" * 10 + " 삼성", "김철수", 9, "삼성", 24),  # only occurrence 9 characters away
        _tsv_row(4, clean, "김철수", 0, "삼성", 15),
    ])
    with pytest.raises(DataProblems) as err:
        read_dataset(path)
    problems = err.value.problems
    assert [(p.row, p.kind) for p in problems] == [(1, "offsets"), (2, "offsets"), (3, "offsets")]
    assert "equally near, so it cannot be repaired" in problems[0].text
    assert "does not occur in the sentence" in problems[1].text
    assert "9 characters away, more than --repair-window 5" in problems[2].text
    assert err.value.summary() == f"3 problems in 3 rows of {path}: 3 offsets"
    # a wider window repairs the far one; strict refuses even the one-character shift
    with pytest.raises(DataProblems) as err:
        read_dataset(path, repair_window=10)
    assert [p.row for p in err.value.problems] == [1, 2]
    with pytest.raises(DataProblems, match=r"row 1, field 'subject word'.*would move it 1 character"):
        read_dataset(_write(tmp_path, [_tsv_row(1, SENT, "김철수", 4, "삼성", 8)], "one.tsv"), offsets="strict")


def test_klue_inclusive_and_generic_exclusive_offsets_are_repaired(tmp_path):
    (tmp_path / "relation_list.json").write_text(json.dumps({"relations": ["no_relation", "org:founded_by"]}))
    item = {"guid": "g1", "sentence": "Then Acme was founded by Kim.", "label": 1,
            "subject_entity": {"word": "Acme", "start_idx": 7, "end_idx": 10, "type": "ORG"},  # truth 5..8
            "object_entity": {"word": "Kim", "start_idx": 25, "end_idx": 27, "type": "PER"}}
    (tmp_path / "k.jsonl").write_text(json.dumps(item) + "\n", encoding="utf-8")
    ds = read_dataset(tmp_path / "k.jsonl")
    assert ds.examples[0].subj == Span(5, 9, "ORG") and ds.repairs[0].new == (5, 8)
    (tmp_path / "g.csv").write_text("id,sentence,subj_start,subj_end,subj_word,obj_start,obj_end,obj_word,label\n"
                                    "1,Then Acme was founded by Kim.,6,10,Acme,25,28,Kim,org:founded_by\n", encoding="utf-8")
    ds = read_dataset(tmp_path / "g.csv", tmp_path / "relation_list.json", columns="end=exclusive")
    assert ds.examples[0].subj_text == "Acme" and ds.repairs[0].old == (6, 10) and ds.repairs[0].new == (5, 9)


def test_every_problem_of_a_file_is_listed_with_counts_exit_2_nothing_written(tmp_path, capsys):
    path = _write(tmp_path, [
        _tsv_row(1, SENT, "이영희", 3, "삼성", 8),  # offsets (absent)
        _tsv_row(2, SENT, "김철수", 3, "삼성", 8, label="인물:소속"),  # unknown label
        _tsv_row(3, SENT, "김철수", 3, "삼성", 8),
        _tsv_row(3, SENT, "김철수", 3, "삼성", 8),  # duplicate id
        "5\t문장\t셋\n",  # 3 columns
        _tsv_row(6, SENT, "김철수", 30, "삼성", 8, label="단체:설"),  # offsets (absent nearby) + unknown label
        _tsv_row(7, SENT, "김철수", 4, "삼성", 8),  # repaired, not a problem
    ])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    status = kfold_main(["check-data", str(path), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.splitlines()
    assert status == 2
    assert err[0] == f"kfold: error: 6 problems in 5 rows of {path}: 2 offsets, 2 unknown label, 1 duplicate id, 1 format"
    assert [line.split(": ")[1] for line in err[1:-1]] == ["row 1, field 'subject word'", "row 2, field 'label'",
                                                          "row 4, field 'id'", "row 5", "row 6, field 'subject word'",
                                                          "row 6, field 'label'"]
    assert "did you mean '인물:소속단체'" in err[2] and "expected 9 tab-separated columns" in err[4]
    # the last line names the way past: rows 1-6 (both rows of the duplicated id) would be left out, row 7 kept
    assert re.fullmatch(r"6 rows cannot be repaired; --bad-rows skip trains without them \(listed in "
                        + re.escape(str(tmp_path / "w" / "data" / "skipped-train-")) + r"[0-9a-f]{10}\.csv\)", err[-1])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, not even the repairs list
    # kfold run refuses the same way, with the test file's problems in the same list
    test = _write(tmp_path, [_tsv_row("t1", SENT, "김철수", 3, "삼성", 8, label="blind"), "t2\tx\n"], "test.tsv")
    assert kfold_main(["run", "--data", str(path), "--test", str(test), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "kfold: error: 7 problems in 6 rows of 2 files: 2 offsets, 2 unknown label, 2 format, 1 duplicate id"
    assert err[-2].startswith(f"  {test}: row 2") and err[-1].startswith("6 rows cannot be repaired; --bad-rows skip")
    assert not (tmp_path / "w").exists()


def test_screen_shows_50_problem_lines_and_all_shows_every_one(tmp_path, capsys):
    path = _write(tmp_path, [_tsv_row(i, SENT, "김철수", 3, "삼성", 8, label="없는") for i in range(1, 61)])
    assert kfold_main(["check-data", str(path), "--no-tokens"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 52 and err[-1] == "  and 10 more (--all lists every one)"
    assert kfold_main(["check-data", str(path), "--no-tokens", "--all"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 61


def test_identity_is_the_repaired_data(tmp_path, tiny_bert, capsys):
    """A run on a repaired file; the same file under --offsets strict is refused with its problems; a file fixed
    by hand the same way is the same data (folds reused); fixed another way it is other data."""
    rows = [_tsv_row(i, SENT, "김철수", 3, "삼성", 8, label=["관계_없음", "인물:소속단체"][i % 2]) for i in range(1, 13)]
    twice = "김철수는 말했다. 오늘 김철수는 삼성에서 일했다."
    dirty = rows + [_tsv_row(13, twice, "김철수", 15, "삼성", 18), _tsv_row(14, SENT, "김철수", 5, "삼성", 8)]
    clean = rows + [_tsv_row(13, twice, "김철수", 13, "삼성", 18), _tsv_row(14, SENT, "김철수", 3, "삼성", 8)]
    other = rows + [_tsv_row(13, twice, "김철수", 0, "삼성", 18), _tsv_row(14, SENT, "김철수", 3, "삼성", 8)]
    work = tmp_path / "w"
    args = ["run", "--workdir", str(work), "--backbone", tiny_bert, "--folds", "2", "--epochs", "1", "--batch-size", "4",
            "--variants", "split", "--tag", "t"]
    assert kfold_main(args + ["--data", str(_write(tmp_path, dirty, "dirty.tsv"))]) == 0
    out = capsys.readouterr().out
    assert "warning: repaired 2 entity spans in dirty.tsv, moved 2 characters" in out
    done = sorted(str(p) for p in work.rglob("done.json"))
    stamp = [p.stat().st_mtime_ns for p in work.rglob("done.json")]
    assert len(done) == 2
    assert kfold_main(args + ["--data", str(tmp_path / "dirty.tsv"), "--offsets", "strict"]) == 2
    assert "2 problems in 2 rows" in capsys.readouterr().err
    (tmp_path / "fixed").mkdir()
    fixed = _write(tmp_path / "fixed", clean, "dirty.tsv")  # same name, fixed by hand exactly as repaired
    assert kfold_main(args + ["--data", str(fixed), "--offsets", "strict"]) == 0
    assert [p.stat().st_mtime_ns for p in work.rglob("done.json")] == stamp  # every fold reused
    (tmp_path / "other").mkdir()
    assert kfold_main(args + ["--data", str(_write(tmp_path / "other", other, "dirty.tsv")), "--offsets", "strict"]) == 2
    assert "field 'data_hash': the run was made with other data" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in work.rglob("done.json")] == stamp  # and the run is untouched


def _far_example(rid, subj_first=True):
    filler = " ".join(["the company"] * 30)
    sentence = f"in the city Kim works {filler} at Samsung in Seoul"
    k, s = sentence.index("Kim"), sentence.index("Samsung")
    a, b = Span(k, k + 3, "PER"), Span(s, s + 7, "ORG")
    return Example(rid, sentence, a if subj_first else b, b if subj_first else a, "x", row=int(rid))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("marker", ["entity_marker_punct", "entity_marker", "typed_entity_marker_punct", "none"])
def test_two_windows_keep_markers_and_entity_positions(kind, marker):
    from kfold.encoding._markers import marker_tokens

    tok = tiny_tokenizer(kind)
    tok.add_tokens(marker_tokens(marker, ["PER", "ORG"]), special_tokens=True)
    near = Example("9", "Kim, Acme", Span(0, 3, "PER"), Span(5, 9, "ORG"), "x", row=9)
    ds = Dataset("mem", [_far_example("1"), _far_example("2", subj_first=False), near], ("x", "y"))
    max_len = 40 if marker.startswith("typed") else 28
    feats, n = encode(ds, tok, marker, max_len)
    assert n == 2 and feats.crop.tolist() == [TWO_WINDOWS, TWO_WINDOWS, WHOLE]
    for i, ex in enumerate(ds.examples[:2]):
        ids = feats.row(i).tolist()
        assert len(ids) == max_len and ids.count(tok.sep_token_id) == 2  # the joint and the end
        s0, s1, sm, o0, o1, om = feats.ent[i][:6]
        assert tok.decode(ids[s0:s1]).replace(" ", "") == ex.subj_text
        assert tok.decode(ids[o0:o1]).replace(" ", "") == ex.obj_text
        sep_at = ids.index(tok.sep_token_id, 1)
        first, second = sorted([(s0, s1), (o0, o1)])
        assert first[1] <= sep_at < second[0]  # one entity in each window, the separator between them
        if marker != "none":
            opening = {"entity_marker_punct": ("@", "#"), "entity_marker": ("[E1]", "[E2]"),
                       "typed_entity_marker_punct": ("@", "#")}[marker]
            assert (tok.decode([ids[sm]]).strip(), tok.decode([ids[om]]).strip()) == opening
            # the closing markers are in the windows too
            closing = {"entity_marker": ("[/E1]", "[/E2]")}.get(marker, opening)
            assert closing[0] in tok.decode(ids[s1:s1 + 3]) and closing[1] in tok.decode(ids[o1:o1 + 3])
    # one window would do for a closer pair: cropped, not split
    close = Example("5", _far_example("5").sentence, Span(12, 15, "PER"), Span(16, 21, "ORG"), "x")  # Kim works
    assert encode(Dataset("mem", [close], ("x",)), tok, marker, max_len)[0].crop.tolist() == [ONE_WINDOW]


def test_entity_pooling_reads_the_entity_tokens_of_both_windows():
    """Through collate and the model's pooling: with one-hot token vectors, each entity's pooled vector is the
    mean of its own tokens' one-hots."""
    from kfold.encoding._batching import collate
    from kfold.model._models import _entity_vector

    tok = tiny_tokenizer("bert")
    ds = Dataset("mem", [_far_example("1"), _far_example("2", subj_first=False)], ("x", "y"))
    feats, _ = encode(ds, tok, "entity_marker_punct", 28)
    batch = collate(feats, np.arange(2), tok.pad_token_id)
    hidden = torch.nn.functional.one_hot(batch["input_ids"], len(tok)).float()
    ent = batch["ent"]
    for cols, text in (((0, 1, 2), "subj_text"), ((3, 4, 5), "obj_text")):
        pooled = _entity_vector(hidden, ent[:, cols[0]], ent[:, cols[1]], ent[:, cols[2]], "mean")
        for i, ex in enumerate(ds.examples):
            want = torch.zeros(len(tok))
            pieces = tok(getattr(ex, text), add_special_tokens=False)["input_ids"]
            for t in pieces:
                want[t] += 1 / len(pieces)
            assert torch.allclose(pooled[i], want), (i, text)
        start = _entity_vector(hidden, ent[:, cols[0]], ent[:, cols[1]], ent[:, cols[2]], "start")
        marker = "@" if text == "subj_text" else "#"
        assert (start.argmax(1) == tok.convert_tokens_to_ids(marker)).all()


def test_check_data_prints_labels_token_lengths_and_two_window_rows(tmp_path, tiny_bert, capsys):
    filler = " ".join(["그 회사는"] * 20)
    far = f"김철수는 {filler} 삼성에서 일했다."
    rows = [_tsv_row(i, SENT, "김철수", 3, "삼성", 8, label="관계_없음" if i < 3 else "인물:소속단체") for i in range(1, 6)]
    rows.append(_tsv_row(6, far, "김철수", 0, "삼성", far.index("삼성")))
    path = _write(tmp_path, rows)
    args = ["check-data", str(path), "--backbone", tiny_bert, "--max-len", "48"]
    assert kfold_main(args) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert "labels: 2 of 3 used; majority '인물:소속단체' 66.67% (the accuracy of always predicting it)" in out
    assert lines.index(["인물:소속단체", "4", "66.67%"]) + 1 == lines.index(["관계_없음", "2", "33.33%"])
    assert ["단체:설립자", "0", "0.00%"] in lines
    line = next(x for x in out.splitlines() if x.startswith("tokens per row"))
    assert "1 of 6 rows longer than max_len 48 (0 cropped to one window, 1 two windows)" in line
    assert "row 6 (id 6):" in out and "one window around each entity" in out
    assert kfold_main(args + ["--too-far", "error"]) == 2
    assert "row 6, field 'sentence': found <entities" in capsys.readouterr().err


def test_every_setting_has_a_help_line_in_its_group(capsys):
    from dataclasses import fields

    from kfold.core.config import Config
    from kfold.core.helptext import GROUPS, HELP
    from tuning.cli import main as tuning_main

    assert set(HELP) == {f.name for f in fields(Config)} and {g for g, _ in HELP.values()} == set(GROUPS)
    for main, argv in ((kfold_main, ["run", "--help"]), (tuning_main, ["search", "--help"])):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        for group in GROUPS:
            assert f"{group} settings (also config-file keys):" in text
        for f in fields(Config):
            flag = "--" + f.name.replace("_", "-")
            assert flag in text
            help_text = " ".join(HELP[f.name][1].split())
            assert help_text in text and len(help_text) > 15, f.name
