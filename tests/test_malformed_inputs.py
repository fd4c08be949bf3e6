"""The malformed-input corpus: every case exits with status 2, prints one line naming the file (and row and
field where there is one), shows no traceback and writes nothing.

Each case is (name, files to create, command, pattern the error line must match). Files are written
into a fresh folder; ``{d}`` in a command is that folder.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from ensemble.cli import main as ensemble_main
from kfold.cli import main as kfold_main
from tests.fakes import fake_run

LABELS = pickle.dumps({"관계_없음": 0, "인물:소속단체": 1, "단체:설립자": 2})
GOOD = "1\t김철수는 삼성에서 일했다.\t김철수\t0\t2\t삼성\t5\t6\t인물:소속단체\n"
GOOD2 = "2\t삼성은 이건희가 세웠다.\t삼성\t0\t1\t이건희\t4\t6\t단체:설립자\n"
KLUE_REL = json.dumps({"relations": ["no_relation", "org:founded_by"]})


def _klue(**over):
    item = {"guid": "g1", "sentence": "Acme was founded by Kim.",
            "subject_entity": {"word": "Acme", "start_idx": 0, "end_idx": 3, "type": "ORG"},
            "object_entity": {"word": "Kim", "start_idx": 20, "end_idx": 22, "type": "PER"}, "label": 1}
    item.update(over)
    return json.dumps(item)


CHECK = ["kfold", "check-data"]
CASES = [
    # competition TSV
    ("tsv_wrong_column_count", {"t.tsv": GOOD.replace("\t인물:소속단체", ""), "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv"], r"t\.tsv: row 1: found <8 columns>, expected 9"),
    ("tsv_offset_past_end", {"t.tsv": GOOD.replace("\t5\t6\t", "\t5\t60\t"), "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv", "--offsets", "strict"],
     r"t\.tsv: row 1, field 'object word': found <'삼성' at \[5, 60\] reads outside the sentence>.*would move it 0"),
    ("tsv_entity_text_mismatch_strict", {"t.tsv": GOOD.replace("\t0\t2\t", "\t1\t3\t"), "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv", "--offsets", "strict"],
     r"row 1, field 'subject word': found <'김철수' at \[1, 3\].*--offsets repair would move it 1 character"),
    ("tsv_entity_text_absent", {"t.tsv": GOOD.replace("\t김철수\t0\t2\t", "\t이영희\t0\t2\t"), "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv"], r"row 1, field 'subject word': found <'이영희' at \[0, 2\] reads '김철수'>.*does not occur"),
    ("tsv_offset_out_of_range_without_text", {"t.csv": "id,sentence,subj_start,subj_end,obj_start,obj_end,label\n"
                                              "1,Kim met Lee,0,3,8,40,a\n", "l.txt": "a\nb"},
     CHECK + ["{d}/t.csv", "--labels", "{d}/l.txt"], r"t\.csv: row 2, field 'object end': .*offsets within the sentence"),
    ("tsv_overlapping_entities_refused", {"t.tsv": "1\t삼성전자 직원\t삼성전자\t0\t3\t삼성\t0\t1\t관계_없음\n",
                                          "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv", "--overlap", "error"], r"row 1, field 'object': found <object \[0,2\) nested with subject"),
    ("tsv_overlapping_entities_under_entity_mask", {"t.tsv": "1\t삼성전자 직원\t삼성전자\t0\t3\t삼성\t0\t1\t관계_없음\n",
                                                    "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv", "--marker", "entity_mask"], r"row 1, field 'object': .*nested with subject.*entity_mask replaces"),
    ("tsv_unknown_label", {"t.tsv": GOOD.replace("인물:소속단체", "인물:소속"), "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv"], r"row 1, field 'label': found '인물:소속', expected one of the 3 labels"),
    ("tsv_duplicate_ids", {"t.tsv": GOOD + GOOD, "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv"], r"row 2, field 'id': found '1', expected unique ids \(already at row 1\)"),
    ("tsv_empty_file", {"t.tsv": "", "label_type.pkl": LABELS}, CHECK + ["{d}/t.tsv"], r"t\.tsv: the file is empty"),
    ("tsv_wrong_encoding_cp949", {"t.tsv": GOOD.encode("cp949"), "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv"], r"t\.tsv: row 1: found bytes .* that are not UTF-8"),
    ("tsv_offset_not_integer", {"t.tsv": GOOD.replace("\t0\t2\t", "\tzero\t2\t"), "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv"], r"row 1, field 'subject start': found 'zero', expected an integer"),
    ("tsv_empty_sentence", {"t.tsv": "1\t \t김\t0\t0\t삼\t0\t0\t관계_없음\n", "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv"], r"row 1, field 'sentence': found ' ', expected a non-empty sentence"),
    ("test_file_with_labels_where_blind_expected", {"t.tsv": GOOD, "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv", "--role", "blind"], r"row 1, field 'label': found '인물:소속단체', expected 'blind'"),
    ("train_file_that_is_blind", {"t.tsv": GOOD.replace("인물:소속단체", "blind"), "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv"], r"row 1, field 'label': found 'blind', expected a label name"),
    ("test_file_mixing_blind_and_labels", {"t.tsv": GOOD + GOOD2.replace("단체:설립자", "blind"), "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv", "--role", "test"], r"row 2, field 'label': found 'blind'.*all blind or all labelled"),
    ("tsv_unclosed_quote", {"t.tsv": '1\t"김철수는 삼성에서\t김철수\t0\t2\t삼성\t5\t6\t인물:소속단체\n', "label_type.pkl": LABELS},
     CHECK + ["{d}/t.tsv"], r"t\.tsv: row 1, field 'sentence': found <a double quote opened on this row, never closed>"),
    # KLUE JSON / JSONL
    ("klue_invalid_json_line", {"t.jsonl": _klue() + "\n{oops\n", "relation_list.json": KLUE_REL},
     CHECK + ["{d}/t.jsonl"], r"t\.jsonl: row 2: found <invalid JSON"),
    ("klue_missing_subject", {"t.jsonl": json.dumps({"guid": "g", "sentence": "x", "object_entity": {}}) + "\n",
                              "relation_list.json": KLUE_REL},
     CHECK + ["{d}/t.jsonl"], r"row 1, field 'subject_entity': found <missing>"),
    ("klue_label_index_out_of_range", {"t.jsonl": _klue(label=7) + "\n", "relation_list.json": KLUE_REL},
     CHECK + ["{d}/t.jsonl"], r"row 1, field 'label': found 7, expected a label index 0\.\.1"),
    # SemEval
    ("semeval_missing_closing_tag", {"t.tsv": "Other\tA <e1>cat</e1> and <e2>dog.\n", "label.txt": "Other\nX"},
     CHECK + ["{d}/t.tsv", "--format", "semeval"], r"t\.tsv: row 1, field 'e2'"),
    ("semeval_no_tab", {"t.tsv": "Other A <e1>cat</e1> <e2>dog</e2>\n", "label.txt": "Other\nX"},
     CHECK + ["{d}/t.tsv", "--format", "semeval"], r"t\.tsv: row 1: found .*expected label<TAB>sentence"),
    # generic CSV
    ("run_micro_f1_without_a_no_relation_label", {"t.csv": "id,sentence,subj_start,subj_end,obj_start,obj_end,label\n"
                                                 "1,Kim met Lee,0,2,8,10,A\n2,Lee met Kim,0,2,8,10,NR\n", "l.txt": "A\nB\nNR"},
     ["kfold", "run", "--data", "{d}/t.csv", "--labels", "{d}/l.txt", "--metric", "micro_f1", "--workdir", "{d}/w"],
     r"micro_f1 leaves out the no-relation label, and these labels have none of .*: name it with --no-relation NAME"),
    ("run_no_relation_that_is_not_a_label", {"t.csv": "id,sentence,subj_start,subj_end,obj_start,obj_end,label\n"
                                             "1,Kim met Lee,0,2,8,10,A\n2,Lee met Kim,0,2,8,10,NR\n", "l.txt": "A\nB\nNR"},
     ["kfold", "run", "--data", "{d}/t.csv", "--labels", "{d}/l.txt", "--no-relation", "N/A", "--workdir", "{d}/w"],
     r"--no-relation 'N/A' is not one of the labels \[A, B, NR\]"),
    ("generic_missing_column", {"t.csv": "id,sentence,subj_start,subj_end,obj_start\n1,Kim met Lee,0,3,8\n", "l.txt": "a\nb"},
     CHECK + ["{d}/t.csv", "--format", "generic", "--labels", "{d}/l.txt"], r"t\.csv: row 1, field 'obj_end'"),
    # label files
    ("label_pickle_gap_in_indices", {"t.tsv": GOOD, "label_type.pkl": pickle.dumps({"관계_없음": 0, "인물:소속단체": 2})},
     CHECK + ["{d}/t.tsv"], r"label_type\.pkl: field 'index': .*expected indices 0\.\.1"),
    ("label_txt_duplicate_names", {"t.tsv": GOOD, "label.txt": "관계_없음\n인물:소속단체\n관계_없음\n"},
     CHECK + ["{d}/t.tsv", "--labels", "{d}/label.txt"], r"label\.txt: row 3, field 'label': found '관계_없음'"),
    # config files and names
    ("config_unknown_key", {"c.json": json.dumps({"learning_rate": 1e-5})},
     ["kfold", "run", "--config", "{d}/c.json", "--workdir", "{d}/w"], r"unknown config key \(in .*c\.json\) 'learning_rate'"),
    ("config_wrong_type", {"c.toml": 'lr = "fast"\n'},
     ["kfold", "run", "--config", "{d}/c.toml", "--workdir", "{d}/w"], r"c\.toml: key 'lr': found 'fast' \(str\), expected float"),
    ("variant_typo", {}, ["kfold", "run", "--variants", "spilt", "--workdir", "{d}/w"],
     r"unknown variant 'spilt'; expected one of \[.*split.*\] \(did you mean 'split'\?\)"),
    ("typed_marker_without_types", {"t.tsv": GOOD + GOOD2, "label_type.pkl": LABELS},
     ["kfold", "run", "--data", "{d}/t.tsv", "--marker", "typed_entity_marker_punct", "--folds", "2", "--workdir", "{d}/w"],
     r"marker 'typed_entity_marker_punct' needs entity types, but .*t\.tsv has none"),
    # store files
    ("store_nan_logits", "nan_store", ["ensemble", "blend", "--workdir", "{d}/w"],
     r"oof\.npz: row 3 \(id id2\), field 'logits': found nan"),
    ("store_truncated_npz", "truncated_store", ["ensemble", "blend", "--workdir", "{d}/w"], r"oof\.npz: found an unreadable file"),
    ("store_members_on_different_fold_maps", "foreign_store", ["ensemble", "blend", "--workdir", "{d}/w"],
     r"field 'fold_map_hash': member 'b' has fold map"),
    ("fold_map_edited", "edited_fold_map", ["kfold", "run", "--data", "{d}/t.tsv", "--folds", "2", "--workdir", "{d}/w"],
     r"\.json: field 'hash': found .* from its content \(the fold map was edited"),
    # submission files
    ("submission_wrong_row_count", {"s.csv": "pred\n1\n", "t.tsv": GOOD + GOOD2, "label_type.pkl": LABELS},
     ["ensemble", "check", "{d}/s.csv", "--format", "pstage2", "--test", "{d}/t.tsv"], r"s\.csv: row 3: found <1 data rows>, expected 2"),
    ("submission_probs_do_not_sum_to_one", {"s.csv": 'id,pred_label,probs\n1,관계_없음,"[0.5, 0.1, 0.1]"\n',
                                            "t.tsv": GOOD, "label_type.pkl": LABELS},
     ["ensemble", "check", "{d}/s.csv", "--format", "klue", "--test", "{d}/t.tsv"], r"s\.csv: row 2, field 'probs': found <sum 0\.7"),
    ("submission_wrong_id_order", {"s.csv": "id,label,관계_없음,인물:소속단체,단체:설립자\n2,관계_없음,1,0,0\n1,관계_없음,1,0,0\n",
                                   "t.tsv": GOOD + GOOD2, "label_type.pkl": LABELS},
     ["ensemble", "check", "{d}/s.csv", "--format", "generic", "--test", "{d}/t.tsv"], r"s\.csv: row 2, field 'id': found '2', expected '1'"),
    ("submission_semeval_bad_label", {"s.txt": "8001\tCause-Effect\n", "t.tsv": "Other\tA <e1>b</e1> <e2>c</e2>\n",
                                      "label.txt": "Other\nCause-Effect(e1,e2)"},
     ["ensemble", "check", "{d}/s.txt", "--format", "semeval", "--test", "{d}/t.tsv"], r"s\.txt: row 1, field 'label': found 'Cause-Effect'"),
]


def _store(d, kind):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 20)
    folds = np.arange(20) % 4
    names = ("a0", "a1", "a2")
    fake_run(d / "w", "a", rng.normal(size=(20, 3)), y, folds, names, rng.normal(size=(5, 3)))
    if kind == "nan_store":
        from kfold.core.store import Predictions, save_predictions

        z = rng.normal(size=(20, 3)).astype(np.float32)
        z[2, 1] = np.nan
        # save_predictions writes what it is given; the reader must catch the NaN
        save_predictions(d / "w" / "runs" / "a" / "oof.npz",
                         Predictions(np.array([f"id{i}" for i in range(20)]), names, z, "f" * 64, y, folds))
    elif kind == "truncated_store":
        path = d / "w" / "runs" / "a" / "oof.npz"
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "foreign_store":
        fake_run(d / "w", "b", rng.normal(size=(20, 3)), y, folds, names, rng.normal(size=(5, 3)), fold_map_hash="e" * 64)


def _edited_fold_map(d):
    (d / "t.tsv").write_text(GOOD + GOOD2, encoding="utf-8")
    (d / "label_type.pkl").write_bytes(LABELS)
    from kfold.data._readers import read_dataset
    from kfold.training._folds import fold_map_for

    fm = fold_map_for(d / "w", read_dataset(d / "t.tsv"), 2, 42, log=lambda m: None)
    raw = json.loads(open(fm.path, encoding="utf-8").read())
    raw["folds"] = raw["folds"][::-1]
    open(fm.path, "w", encoding="utf-8").write(json.dumps(raw))


def _snapshot(d):
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def _materialise(tmp_path, files):
    if isinstance(files, str):
        if files == "edited_fold_map":
            _edited_fold_map(tmp_path)
        else:
            _store(tmp_path, files)
        return
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def test_corpus_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name,files,argv,pattern", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_gives_one_line_exit_2_and_writes_nothing(tmp_path, capsys, name, files, argv, pattern):
    _materialise(tmp_path, files)
    before = _snapshot(tmp_path)
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    main = kfold_main if argv[0] == "kfold" else ensemble_main
    status = main(argv[1:])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("argv", [["kfold", "check-data", "{d}/t.tsv"], ["kfold", "run", "--variants", "spilt"],
                                  ["ensemble", "check", "{d}/t.tsv", "--format", "pstage2", "--test", "{d}/t.tsv"]])
def test_console_scripts_exit_2_without_traceback(tmp_path, argv):
    (tmp_path / "t.tsv").write_bytes(GOOD.encode("cp949"))
    (tmp_path / "label_type.pkl").write_bytes(LABELS)
    module = {"kfold": "kfold.cli", "ensemble": "ensemble.cli"}[argv[0]]
    cmd = [sys.executable, "-m", module] + [a.replace("{d}", str(tmp_path)) for a in argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
