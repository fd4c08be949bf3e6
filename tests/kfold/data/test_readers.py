"""Readers: every format, CSV-quoted sentences, inclusive offsets, label files, unusual-but-valid input."""

from __future__ import annotations

import json
import pickle

import pytest

from kfold.core.errors import DataError
from kfold.data._labels import read_label_file
from kfold.data._readers import detect_format, read_dataset

LABELS = {"관계_없음": 0, "인물:소속단체": 1, "단체:설립자": 2}


def _pkl(folder, mapping=LABELS):
    path = folder / "label_type.pkl"
    path.write_bytes(pickle.dumps(mapping))
    return path


def test_competition_tsv_inclusive_offsets(tmp_path):
    _pkl(tmp_path)
    (tmp_path / "train.tsv").write_text(
        "1\t김철수는 삼성에서 일했다.\t김철수\t0\t2\t삼성\t5\t6\t인물:소속단체\n"
        "2\t삼성은 이건희가 세웠다.\t삼성\t0\t1\t이건희\t4\t6\t단체:설립자\n", encoding="utf-8")
    ds = read_dataset(tmp_path / "train.tsv")
    assert [ex.id for ex in ds.examples] == ["1", "2"]
    ex = ds.examples[0]
    assert (ex.subj.start, ex.subj.end, ex.subj_text) == (0, 3, "김철수")
    assert (ex.obj.start, ex.obj.end, ex.obj_text) == (5, 7, "삼성")
    assert ex.subj.type is None and not ds.has_types
    assert ds.label_names == tuple(LABELS) and ds.y.tolist() == [1, 2]


def test_competition_tsv_csv_quoted_sentence_offsets_refer_to_unquoted_text(tmp_path):
    _pkl(tmp_path)
    # the sentence contains a tab-free quote pair; CSV quoting doubles the inner quotes
    sentence = '그는 "삼성" 직원 김철수라고 말했다.'
    s = sentence.index("삼성")
    o = sentence.index("김철수")
    quoted = '"' + sentence.replace('"', '""') + '"'
    (tmp_path / "train.tsv").write_text(f"7\t{quoted}\t삼성\t{s}\t{s + 1}\t김철수\t{o}\t{o + 2}\t관계_없음\n", encoding="utf-8")
    ds = read_dataset(tmp_path / "train.tsv")
    ex = ds.examples[0]
    assert ex.sentence == sentence
    assert ex.subj_text == "삼성" and ex.obj_text == "김철수"


def test_competition_blind_test_file(tmp_path):
    _pkl(tmp_path)
    (tmp_path / "test.tsv").write_text("a\tKim works at Acme.\tKim\t0\t2\tAcme\t13\t16\tblind\n", encoding="utf-8")
    ds = read_dataset(tmp_path / "test.tsv", role="test")
    assert not ds.labelled and ds.y.tolist() == [-1]
    ds = read_dataset(tmp_path / "test.tsv", role="blind")
    assert ds.examples[0].label is None


def test_klue_json_list_and_jsonl_with_types(tmp_path):
    rel = tmp_path / "relation_list.json"
    rel.write_text(json.dumps({"relations": ["no_relation", "org:founded_by", "per:employee_of"]}), encoding="utf-8")
    item = {"guid": "g1", "sentence": "Acme was founded by Kim.",
            "subject_entity": {"word": "Acme", "start_idx": 0, "end_idx": 3, "type": "ORG"},
            "object_entity": {"word": "Kim", "start_idx": 20, "end_idx": 22, "type": "PER"}, "label": 1}
    item2 = dict(item, guid="g2", label="per:employee_of")
    (tmp_path / "train.json").write_text(json.dumps([item, item2]), encoding="utf-8")
    (tmp_path / "train.jsonl").write_text(json.dumps(item) + "\n\n" + json.dumps(item2) + "\n", encoding="utf-8")
    for name in ("train.json", "train.jsonl"):
        ds = read_dataset(tmp_path / name)
        assert [ex.label for ex in ds.examples] == ["org:founded_by", "per:employee_of"]
        assert ds.examples[0].subj == type(ds.examples[0].subj)(0, 4, "ORG")
        assert ds.examples[0].obj_text == "Kim" and ds.has_types


def test_semeval_tags_become_offsets_both_spacings(tmp_path):
    (tmp_path / "label.txt").write_text("Other\nCause-Effect(e1,e2)\nCause-Effect(e2,e1)", encoding="utf-8")
    (tmp_path / "train.tsv").write_text(
        "Cause-Effect(e1,e2)\tThe <e1> fire </e1> caused <e2> smoke </e2>.\n"
        "Other\tA <e1>cat</e1> and a <e2>dog</e2> .\n", encoding="utf-8")
    ds = read_dataset(tmp_path / "train.tsv")
    a, b = ds.examples
    assert a.sentence == "The fire caused smoke." and a.subj_text == "fire" and a.obj_text == "smoke"
    assert b.sentence == "A cat and a dog ." and (b.subj_text, b.obj_text) == ("cat", "dog")
    assert [a.id, b.id] == ["1", "2"]
    assert read_dataset(tmp_path / "train.tsv", id_start=8001).examples[1].id == "8002"


def test_semeval_object_before_subject(tmp_path):
    (tmp_path / "label.txt").write_text("Other\nCause-Effect(e2,e1)", encoding="utf-8")
    (tmp_path / "t.tsv").write_text("Cause-Effect(e2,e1)\t<e2> Smoke </e2> came from the <e1> fire </e1>.\n", encoding="utf-8")
    ex = read_dataset(tmp_path / "t.tsv").examples[0]
    assert ex.sentence == "Smoke came from the fire." and ex.subj_text == "fire" and ex.obj_text == "Smoke"


def test_generic_csv_with_mapping_and_exclusive_ends(tmp_path):
    (tmp_path / "d.csv").write_text(
        "guid,text,s0,s1,st,o0,o1,ot,rel\n"
        'x1,"Kim, a chemist, joined Acme.",0,3,PER,23,27,ORG,employee\n', encoding="utf-8")
    ds = read_dataset(tmp_path / "d.csv", ["none", "employee"], format="generic",
                      columns="id=guid,sentence=text,subj_start=s0,subj_end=s1,subj_type=st,obj_start=o0,"
                              "obj_end=o1,obj_type=ot,label=rel,end=exclusive")
    ex = ds.examples[0]
    assert (ex.subj_text, ex.obj_text, ex.subj.type, ex.label) == ("Kim", "Acme", "PER", "employee")


def test_detect_format():
    from pathlib import Path

    assert detect_format(Path("a.jsonl"), "{}") == "klue"
    assert detect_format(Path("a.tsv"), "Other\tA <e1>b</e1> <e2>c</e2>") == "semeval"
    assert detect_format(Path("a.tsv"), "\t".join("123456789")) == "competition"
    assert detect_format(Path("a.csv"), "id,sentence,subj_start") == "generic"


@pytest.mark.parametrize("kind", ["pkl", "json_list", "json_dict", "relations", "txt"])
def test_label_files(tmp_path, kind):
    names = ["no_relation", "a", "b"]
    path = {
        "pkl": tmp_path / "l.pkl", "json_list": tmp_path / "l.json", "json_dict": tmp_path / "d.json",
        "relations": tmp_path / "r.json", "txt": tmp_path / "l.txt",
    }[kind]
    if kind == "pkl":
        path.write_bytes(pickle.dumps({"b": 2, "no_relation": 0, "a": 1, "blind": 100}))
    elif kind == "json_list":
        path.write_text(json.dumps(names))
    elif kind == "json_dict":
        path.write_text(json.dumps({"a": 1, "b": 2, "no_relation": 0}))
    elif kind == "relations":
        path.write_text(json.dumps({"relations": names}))
    else:
        path.write_text("no_relation\na\nb\n\n")
    assert read_label_file(path) == tuple(names)


def test_pickled_label_file_cannot_run_code(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "l.pkl").write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(DataError, match="not allowed"):
        read_label_file(tmp_path / "l.pkl")


# valid but unusual input is read correctly
def test_bom_crlf_trailing_blank_lines(tmp_path):
    _pkl(tmp_path)
    body = "1\t김철수는 삼성에서 일했다.\t김철수\t0\t2\t삼성\t5\t6\t인물:소속단체\r\n\r\n\r\n"
    (tmp_path / "t.tsv").write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    ds = read_dataset(tmp_path / "t.tsv")
    assert len(ds) == 1 and ds.examples[0].id == "1" and ds.examples[0].label == "인물:소속단체"
    sem = tmp_path / "s.tsv"
    sem.write_bytes(b"\xef\xbb\xbfOther\tA <e1>cat</e1> and a <e2>dog</e2>.\r\n\r\n")
    ex = read_dataset(sem, ["Other", "X"]).examples[0]
    assert ex.sentence == "A cat and a dog." and ex.obj_text == "dog"


def test_smart_quotes_inside_utf8_text(tmp_path):
    _pkl(tmp_path)
    sentence = "Kim said \u201cAcme\u2019s plant\u201d is new."
    s, o = 0, sentence.index("Acme")
    (tmp_path / "t.tsv").write_text(f"1\t{sentence}\tKim\t{s}\t{s + 2}\tAcme\t{o}\t{o + 3}\t관계_없음\n", encoding="utf-8")
    ex = read_dataset(tmp_path / "t.tsv").examples[0]
    assert ex.sentence == sentence and ex.obj_text == "Acme"


def test_labels_derived_from_data_when_no_label_file(tmp_path):
    (tmp_path / "t.tsv").write_text("1\tKim works at Acme.\tKim\t0\t2\tAcme\t13\t16\temployee\n"
                                    "2\tLee met Kim.\tLee\t0\t2\tKim\t8\t10\tno_relation\n", encoding="utf-8")
    ds = read_dataset(tmp_path / "t.tsv")
    assert ds.label_names == ("no_relation", "employee")


def test_klue_entities_as_python_dict_literals(tmp_path):
    (tmp_path / "relation_list.json").write_text(json.dumps({"relations": ["no_relation", "org:founded_by"]}))
    item = {"guid": "g1", "sentence": "O'Neil's Acme was founded by Kim.",
            "subject_entity": str({"word": "O'Neil's Acme", "start_idx": 0, "end_idx": 12, "type": "ORG"}),
            "object_entity": str({"word": "Kim", "start_idx": 29, "end_idx": 31, "type": "PER"}), "label": 1}
    (tmp_path / "t.jsonl").write_text(json.dumps(item) + "\n")
    ex = read_dataset(tmp_path / "t.jsonl").examples[0]
    assert ex.subj_text == "O'Neil's Acme" and ex.obj_text == "Kim" and ex.subj.type == "ORG"


def test_check_data_and_demo_data_commands(tmp_path, capsys):
    from kfold.cli import main

    assert main(["demo-data", "--out", str(tmp_path / "d"), "--n-train", "50", "--n-test", "10"]) == 0
    assert main(["check-data", str(tmp_path / "d" / "train.tsv")]) == 0
    assert main(["check-data", str(tmp_path / "d" / "test.tsv"), "--role", "blind"]) == 0
    out = capsys.readouterr().out
    assert "train.tsv: 50 rows (labelled), 7 labels" in out and "test.tsv: 10 rows (blind)" in out
    ds = read_dataset(tmp_path / "d" / "train.jsonl")  # the KLUE-format copy carries entity types
    assert ds.has_types and len(ds) == 50


def test_demo_data_is_deterministic_and_has_quoted_rows(tmp_path):
    from kfold.data._demo import write_demo_data

    a = write_demo_data(tmp_path / "a", 200, 20, seed=3).read_bytes()
    b = write_demo_data(tmp_path / "b", 200, 20, seed=3).read_bytes()
    assert a == b
    text = a.decode("utf-8")
    assert '\t"' in text and any(ord(c) > 0xAC00 for c in text) and "works for" in text  # quoted, Korean, English
