"""Every leaderboard format round-trips through its checker; malformed files are rejected with the row."""

from __future__ import annotations

import numpy as np
import pytest

from kfold.core.errors import DataError, StoreError
from submissions import FORMATS, check_submission, render_submission, write_submission

NAMES = ("관계_없음", "인물:소속단체", "단체:설립자")
IDS = ["a", "b", "c", "d"]


@pytest.fixture
def probs():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 4)
    return p


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path, fmt, probs):
    path = write_submission(tmp_path / f"s.{fmt}", fmt, IDS, NAMES, probs)
    assert check_submission(path, fmt, IDS, NAMES) == 4


def test_file_contents(probs):
    pred = probs.argmax(1)
    assert render_submission("pstage2", IDS, NAMES, probs).splitlines() == ["pred"] + [str(p) for p in pred]
    sem = render_submission("semeval", IDS, NAMES, probs).splitlines()
    assert sem[0] == f"8001\t{NAMES[pred[0]]}" and sem[3].startswith("8004\t")
    klue = render_submission("klue", IDS, NAMES, probs).splitlines()
    assert klue[0] == "id,pred_label,probs" and klue[1].startswith(f"a,{NAMES[pred[0]]},\"[")
    gen = render_submission("generic", IDS, NAMES, probs).splitlines()
    assert gen[0] == "id,label," + ",".join(NAMES)


@pytest.mark.parametrize("fmt,text,pattern", [
    ("pstage2", "pred\n0\n1\n2\n", r"row 5: found <3 data rows>, expected 4"),
    ("pstage2", "pred\n0\n1\n7\n0\n", r"row 4, field 'pred': found '7'"),
    ("pstage2", "prediction\n0\n1\n2\n0\n", r"row 1, field 'header'"),
    ("klue", "id,pred_label,probs\na,관계_없음,\"[1,0,0]\"\nb,관계_없음,\"[1,0,0]\"\nc,관계_없음,\"[0.5,0.5]\"\nd,관계_없음,\"[1,0,0]\"\n",
     r"row 4, field 'probs': found <2 values>"),
    ("klue", "id,pred_label,probs\na,관계_없음,\"[1,0,0]\"\nb,관계_없음,\"[0,1,0]\"\nc,관계_없음,\"[1,0,0]\"\nd,관계_없음,\"[1,0,0]\"\n",
     r"row 3, field 'label': found '관계_없음', expected the most probable label '인물:소속단체'"),
    ("generic", "id,label,관계_없음,인물:소속단체,단체:설립자\na,관계_없음,1,0,0\nb,관계_없음,1,0,0\nc,관계_없음,nan,0,0\nd,관계_없음,1,0,0\n",
     r"row 4, field 'probability columns'"),
    ("semeval", "8001\t관계_없음\n8003\t관계_없음\n8003\t관계_없음\n8004\t관계_없음\n", r"row 2, field 'id': found '8003', expected 8002"),
])
def test_malformed_files_are_rejected_with_the_row(tmp_path, fmt, text, pattern):
    path = tmp_path / "bad"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        check_submission(path, fmt, IDS, NAMES)


def test_existing_file_is_kept_without_force(tmp_path, probs):
    path = write_submission(tmp_path / "s.csv", "pstage2", IDS, NAMES, probs)
    before = path.read_text()
    with pytest.raises(StoreError, match="exists; pass --force"):
        write_submission(path, "pstage2", IDS, NAMES, probs[::-1])
    assert path.read_text() == before
    write_submission(path, "pstage2", IDS, NAMES, probs[::-1], force=True)
    assert path.read_text() != before
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]  # no temporary files left behind
