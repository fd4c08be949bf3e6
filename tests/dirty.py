"""A competition-format file with the source competition's faults, built from real KLUE rows.

The source competition's train.tsv has 24 entity spans (of 18,000) shifted right by 1 or 2 characters
(15 by 2, 9 by 1); in 3 of them the entity text occurs twice in the sentence and the occurrence nearest to the
given offsets is the right one. It also has 3 rows whose subject and object spans overlap (subject 세계은행 /
object 전 세계 in "전 세계은행", all labelled no-relation). :func:`write_dirty_competition_file` reproduces both
on KLUE rows, and can add rows that no rule can repair (an entity text that is not in its sentence).
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


def _overlapping(sentence: str, start: int, end: int, kind: str) -> tuple[int, int] | None:
    """An object span overlapping the subject [start, end] (inclusive): ``crossing`` starts at the word before the
    subject and ends inside it (as 전 세계 / 세계은행), ``nested`` is the subject's first half; None when the
    sentence has no such span here."""
    if end - start < 1 or " " in sentence[start : end + 1]:
        return None
    if kind == "nested":
        return start, start + (end - start) // 2
    before = sentence.rfind(" ", 0, start - 1)
    if start < 2 or sentence[start - 1] != " " or start - before < 3:
        return None
    return before + 1, start + (end - start) // 2


def write_dirty_competition_file(klue_jsonl: Path, out: Path, n_rows: int = 300, overlaps: tuple[str, ...] = (),
                                 broken: int = 0) -> dict:
    """Write ``out/train.tsv`` (competition TSV, inclusive ends) and ``out/label_type.pkl`` from the first KLUE
    rows, with 24 entity spans shifted right: 15 by 2 and 9 by 1, 3 of them on text that occurs twice; plus one
    row per entry of ``overlaps`` ("crossing" or "nested") whose object overlaps its subject (labelled
    no_relation), and ``broken`` rows whose subject text is not in the sentence (no rule can repair them).

    Returns {"shifted": [(row, field, true start, given start)], "overlaps": [(row, kind)], "broken": [row],
    "rows": n}.
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
    shifted_items = {n for n, _ in plan}
    overlap_plan, wanted = {}, list(overlaps)  # item -> (kind, object span)
    for n in keep[len(keep) // 3 :]:  # spread through the file, not in its first rows
        if not wanted:
            break
        ent = items[n]["subject_entity"]
        span = None if n in shifted_items else _overlapping(items[n]["sentence"], ent["start_idx"], ent["end_idx"], wanted[0])
        if span is not None:
            overlap_plan[n] = (wanted.pop(0), span)
    assert not wanted, "not enough KLUE rows for the overlapping spans"
    broken_items = [n for n in keep[len(keep) // 2 :] if n not in shifted_items and n not in overlap_plan][:broken]
    out.mkdir(parents=True, exist_ok=True)
    shifted, overlapping, unrepairable = [], [], []
    with open(out / "train.tsv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", quotechar='"', lineterminator="\n")
        for row, n in enumerate(keep, start=1):
            it = items[n]
            cells = [it["guid"], it["sentence"]]
            for key in ("subject_entity", "object_entity"):
                ent = dict(it[key])
                if key == "object_entity" and n in overlap_plan:
                    kind, (a, b) = overlap_plan[n]
                    ent.update(word=it["sentence"][a : b + 1], start_idx=a, end_idx=b)
                    overlapping.append((row, kind))
                if key == "subject_entity" and n in broken_items:
                    ent["word"] = "없는낱말"  # not in the sentence: no offset repair can place it
                    unrepairable.append(row)
                d = plan.get((n, key), 0)
                if d:
                    shifted.append((row, "subject" if key == "subject_entity" else "object", ent["start_idx"], ent["start_idx"] + d))
                cells += [ent["word"], ent["start_idx"] + d, ent["end_idx"] + d]
            writer.writerow(cells + ["no_relation" if n in overlap_plan else it["label_name"]])
    (out / "label_type.pkl").write_bytes(pickle.dumps({name: i for i, name in enumerate(relations)}))
    return {"shifted": shifted, "overlaps": overlapping, "broken": unrepairable, "rows": len(keep)}
