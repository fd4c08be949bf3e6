"""A deterministic generator of demo data: template sentences (Korean and English) with two entities and
a relation label, written in the source competition's TSV format with a pickled label file. Torch-free.

Files written to ``out``: ``train.tsv``, ``test.tsv`` (label ``blind``), ``test_gold.tsv`` (the answers),
``label_type.pkl`` (name -> index, ``관계_없음`` is 0) and ``train.jsonl`` (KLUE format, with entity types).
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import random
from pathlib import Path

from kfold.core.textio import write_atomic, write_text_atomic

LABELS = ("관계_없음", "인물:소속단체", "인물:출생지", "단체:설립자", "단체:본사_위치", "인물:배우자", "단체:상위_단체")

_PEOPLE_KO = ["김민준", "이서연", "박지호", "최수아", "정도윤", "강하은", "조시우", "윤지민", "장예준", "임채원",
              "한지우", "오서준", "서다은", "신유나", "권태오", "황보미"]
_PEOPLE_EN = ["Alice Kim", "Brian Lee", "Chloe Park", "Daniel Choi", "Emma Jung", "Felix Kang", "Grace Yoon",
              "Henry Jang", "Iris Han", "Jack Seo"]
_ORGS_KO = ["한빛전자", "푸른출판사", "대한항공우주", "새별은행", "미래바이오", "동해조선", "하늘소프트", "백두건설"]
_ORGS_EN = ["Acme Robotics", "Blue River Bank", "Nova Pharma", "Orbit Systems", "Pine Media", "Quartz Labs"]
_PLACES_KO = ["서울", "부산", "대구", "광주", "대전", "제주", "인천", "수원"]
_PLACES_EN = ["Seoul", "Busan", "Boston", "Lyon", "Osaka", "Denver", "Porto"]

# (label, subject type, object type, templates); {s} is the subject, {o} the object
_TEMPLATES = [
    ("인물:소속단체", "PER", "ORG", ["{s}은 {o}에서 연구원으로 일하고 있다.", "{o} 소속 {s} 팀장은 새 제품을 발표했다.",
                                  '{s}은 "{o}"의 직원이라고 밝혔다.', "{s} works for {o} as an engineer.",
                                  "{o} hired {s} as its new analyst."]),
    ("인물:출생지", "PER", "LOC", ["{s}은 {o}에서 태어났다.", "{o} 출생인 {s}은 어린 시절을 그곳에서 보냈다.",
                                "{s} was born in {o}.", "Born in {o}, {s} moved abroad at ten."]),
    ("단체:설립자", "ORG", "PER", ["{s}은 {o}이 설립한 회사이다.", "{o}은 1998년에 {s}을 세웠다.",
                                "{s} was founded by {o}.", "{o} founded {s} in a small garage."]),
    ("단체:본사_위치", "ORG", "LOC", ["{s}의 본사는 {o}에 있다.", "{o}에 본사를 둔 {s}은 수출을 늘렸다.",
                                   "{s} is headquartered in {o}.", "The {o}-based {s} opened a new plant."]),
    ("인물:배우자", "PER", "PER", ["{s}은 {o}와 결혼했다.", "{s}의 아내 {o}는 화가이다.",
                                "{s} married {o} last spring.", "{s} and her husband {o} live abroad."]),
    ("단체:상위_단체", "ORG", "ORG", ["{s}은 {o}의 자회사이다.", "{o} 산하의 {s}은 올해 흑자를 냈다.",
                                  "{s} is a subsidiary of {o}.", "{o} owns {s} through a holding company."]),
    ("관계_없음", "PER", "ORG", ["{s}은 {o}의 신제품을 구입했다.", "{s}은 뉴스에서 {o}에 대한 기사를 읽었다.",
                              "{s} read a report about {o}.", "{s} visited the {o} booth at the fair."]),
    ("관계_없음", "PER", "LOC", ["{s}은 휴가 때 {o}을 여행했다.", "{s} spent a week in {o} on holiday.",
                              "{s}은 {o}의 날씨가 좋다고 말했다."]),
    ("관계_없음", "ORG", "LOC", ["{s}은 {o}에서 박람회에 참가했다.", "{s} held a sale in {o} last week."]),
    ("관계_없음", "PER", "PER", ["{s}은 회의에서 {o}를 처음 만났다.", "{s} sat next to {o} on the train."]),
]


def _pick(rng: random.Random, etype: str, korean: bool) -> str:
    pool = {("PER", True): _PEOPLE_KO, ("PER", False): _PEOPLE_EN, ("ORG", True): _ORGS_KO,
            ("ORG", False): _ORGS_EN, ("LOC", True): _PLACES_KO, ("LOC", False): _PLACES_EN}[(etype, korean)]
    return rng.choice(pool)


def _fill(template: str, subj: str, obj: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """Fill a template by position; returns the sentence and inclusive spans of subject and object."""
    out, spans, i = [], {}, 0
    while i < len(template):
        if template.startswith(("{s}", "{o}"), i):
            key = template[i + 1]
            text = subj if key == "s" else obj
            start = len("".join(out))
            spans[key] = (start, start + len(text) - 1)
            out.append(text)
            i += 3
        else:
            out.append(template[i])
            i += 1
    return "".join(out), spans["s"], spans["o"]


def generate_rows(n: int, seed: int) -> list[dict]:
    """``n`` examples; deterministic for a seed."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label, stype, otype, templates = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
        template = rng.choice(templates)
        korean = not template.isascii()
        subj = _pick(rng, stype, korean)
        obj = _pick(rng, otype, korean)
        while obj == subj:
            obj = _pick(rng, otype, korean)
        sentence, s, o = _fill(template, subj, obj)
        rows.append({"sentence": sentence, "subj": (subj, *s, stype), "obj": (obj, *o, otype), "label": label})
    return rows


def _tsv(rows: list[dict], ids: list[str], blind: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    for rid, r in zip(ids, rows):
        writer.writerow([rid, r["sentence"], r["subj"][0], r["subj"][1], r["subj"][2], r["obj"][0], r["obj"][1],
                         r["obj"][2], "blind" if blind else r["label"]])
    return buf.getvalue()


def write_demo_data(out: str | Path, n_train: int = 600, n_test: int = 200, seed: int = 2021) -> Path:
    """Write the demo files (see module doc) under ``out``; returns the train file's path.

    Example
    -------
    >>> write_demo_data("runs/demo-data")  # doctest: +SKIP
    PosixPath('runs/demo-data/train.tsv')
    """
    out = Path(out)
    train = generate_rows(n_train, seed)
    test = generate_rows(n_test, seed + 1)
    train_ids = [f"demo-train-{i:05d}" for i in range(n_train)]
    test_ids = [f"demo-test-{i:05d}" for i in range(n_test)]
    write_text_atomic(out / "test.tsv", _tsv(test, test_ids, blind=True))
    write_text_atomic(out / "test_gold.tsv", _tsv(test, test_ids, blind=False))
    write_atomic(out / "label_type.pkl", lambda tmp: tmp.write_bytes(pickle.dumps({n: i for i, n in enumerate(LABELS)})))
    klue = [json.dumps({"guid": rid, "sentence": r["sentence"],
                        "subject_entity": dict(zip(("word", "start_idx", "end_idx", "type"), r["subj"])),
                        "object_entity": dict(zip(("word", "start_idx", "end_idx", "type"), r["obj"])),
                        "label": r["label"]}, ensure_ascii=False) for rid, r in zip(train_ids, train)]
    write_text_atomic(out / "train.jsonl", "\n".join(klue) + "\n")
    # train.tsv last: its presence means the demo set is complete
    write_text_atomic(out / "train.tsv", _tsv(train, train_ids, blind=False))
    return out / "train.tsv"
