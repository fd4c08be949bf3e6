"""A competition-format file with the source competition's offset faults, built from real KLUE rows.

The source competition's train.tsv has 24 entity spans (of 18,000) shifted right by 1 or 2 characters
(15 by 2, 9 by 1); in 3 of them the entity text occurs twice in the sentence and the occurrence nearest to the
given offsets is the right one. :func:`write_dirty_competition_file` reproduces exactly that on KLUE rows.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path


def _twice_ok(sentence: str, word: str, start: int, shift: int) -> bool:
    """The word occurs more than once, and after the shift its true start is still the unique nearest one."""
    others = [i for i in range(len(sentence)) if sentence.startswith(word, i) and i != start]
    return bool(others) and all(abs(o - (start + shift)) > shift for o in others)


def _once_ok(sentence: str, word: str, start: int, shift: int) -> bool:
    return sentence.count(word) == 1 and not sentence.startswith(word, start + shift)


def write_dirty_competition_file(klue_jsonl: Path, out: Path, n_rows: int = 300) -> dict:
    """Write ``out/train.tsv`` (competition TSV, inclusive ends) and ``out/label_type.pkl`` from the first KLUE
    rows, with 24 entity spans shifted right: 15 by 2 and 9 by 1, 3 of them on text that occurs twice.

    Returns {"shifted": [(row, field, true start, given start)], "rows": n}.
    """
    items = [json.loads(line) for line in Path(klue_jsonl).read_text(encoding="utf-8").splitlines() if line.strip()]
    relations = json.loads((Path(klue_jsonl).parent / "relation_list.json").read_text(encoding="utf-8"))["relations"]
    twice = [(n, key) for n, it in enumerate(items) for key in ("subject_entity", "object_entity")
             if _twice_ok(it["sentence"], it[key]["word"], it[key]["start_idx"], 2)][:3]
    keep = sorted({n for n, _ in twice} | set(range(n_rows - len(twice))))
    plan = {pair: 2 for pair in twice}  # (item, entity) -> shift
    shifts = [2] * 12 + [1] * 9  # with the 3 twice-rows (shifted by 2): 15 by 2, 9 by 1
    for n in keep:
        if not shifts:
            break
        key = "subject_entity" if n % 2 else "object_entity"
        it = items[n]
        if (n, "subject_entity") in plan or (n, "object_entity") in plan:
            continue
        if _once_ok(it["sentence"], it[key]["word"], it[key]["start_idx"], shifts[0]):
            plan[(n, key)] = shifts.pop(0)
    assert len(plan) == 24 and not shifts, "not enough KLUE rows to shift"
    out.mkdir(parents=True, exist_ok=True)
    shifted = []
    with open(out / "train.tsv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", quotechar='"', lineterminator="\n")
        for row, n in enumerate(keep, start=1):
            it = items[n]
            cells = [it["guid"], it["sentence"]]
            for key in ("subject_entity", "object_entity"):
                ent = it[key]
                d = plan.get((n, key), 0)
                if d:
                    shifted.append((row, "subject" if key == "subject_entity" else "object", ent["start_idx"], ent["start_idx"] + d))
                cells += [ent["word"], ent["start_idx"] + d, ent["end_idx"] + d]
            writer.writerow(cells + [it["label_name"]])
    (out / "label_type.pkl").write_bytes(pickle.dumps({name: i for i, name in enumerate(relations)}))
    return {"shifted": shifted, "rows": len(keep)}
