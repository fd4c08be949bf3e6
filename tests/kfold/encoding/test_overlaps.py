"""Overlapping subject and object spans (nested, crossing, identical): markers at their positions by the fixed
rule, each entity pooled over its own tokens without the other entity's markers, entity swap by the same rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kfold.core.config import MARKERS
from kfold.core.errors import ConfigError
from kfold.data import Dataset, Example, Span, swap_entities
from kfold.encoding import encode, mark, marker_tokens
from tests.tiny import KINDS, tiny_tokenizer

SENT = "kim lee works at samsung"
NESTED = Example("n", SENT, Span(0, 7, "PER"), Span(4, 7, "PER"), "x")  # object inside the subject
CROSSING = Example("c", "samsung kim lee", Span(0, 11, "ORG"), Span(8, 15, "PER"), "x")
IDENTICAL = Example("i", "kim works", Span(0, 3, "PER"), Span(0, 3, "PER"), "x")
INSIDE = Example("o", SENT, Span(4, 7, "PER"), Span(0, 7, "PER"), "x")  # subject inside the object
CASES = {"nested": NESTED, "crossing": CROSSING, "identical": IDENTICAL, "subject inside": INSIDE}

#: the rule, written out: the earlier span opens first (starting together: the longer, then the subject) and
#: closes last; crossing spans cross
EXPECTED = {
    ("nested", "entity_marker_punct"): "@ kim # lee # @ works at samsung",
    ("crossing", "entity_marker_punct"): "@ samsung # kim @ lee #",
    ("identical", "entity_marker_punct"): "@ # kim # @ works",
    ("subject inside", "entity_marker_punct"): "# kim @ lee @ # works at samsung",
    ("nested", "entity_marker"): "[E1] kim [E2] lee [/E2] [/E1] works at samsung",
    ("crossing", "entity_marker"): "[E1] samsung [E2] kim [/E1] lee [/E2]",
    ("identical", "entity_marker"): "[E1] [E2] kim [/E2] [/E1] works",
    ("nested", "typed_entity_marker"): "<S:PER> kim <O:PER> lee </O:PER> </S:PER> works at samsung",
    ("crossing", "typed_entity_marker_punct"): "@ * ORG * samsung # ^ PER ^ kim @ lee #",
    ("identical", "typed_entity_marker_punct"): "@ * PER * # ^ PER ^ kim # @ works",
    ("nested", "none"): SENT,
}
OVERLAP_MARKERS = [m for m in MARKERS if m != "entity_mask"]


@pytest.mark.parametrize("case,marker", sorted(EXPECTED))
def test_markers_follow_the_rule_on_overlapping_spans(case, marker):
    m = mark(CASES[case], marker)
    assert m.text == EXPECTED[(case, marker)]


@pytest.mark.parametrize("marker", OVERLAP_MARKERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_body_is_its_text_with_only_the_other_entitys_markers_inside(case, marker):
    ex = CASES[case]
    m = mark(ex, marker)
    for body, skip, span in ((m.subj_body, m.subj_skip, ex.subj), (m.obj_body, m.obj_skip, ex.obj)):
        text = m.text[body[0] : body[1]]
        # cut the other entity's markers out of the body: what is left is the entity's own text
        kept, at = [], body[0]
        for a, b in sorted(skip):
            assert body[0] <= a < b <= body[1]
            kept.append(m.text[at:a])
            at = b
        kept.append(m.text[at : body[1]])
        assert " ".join("".join(kept).split()) == ex.sentence[span.start : span.end], (text, skip)


def _encoded(kind: str, marker: str, examples):
    tok = tiny_tokenizer(kind)
    tok.add_tokens(marker_tokens(marker, ["PER", "ORG"]), special_tokens=True)
    feats, _ = encode(Dataset("mem", list(examples), ("x", "y")), tok, marker, 64)
    return tok, feats


def test_token_positions_by_hand_on_the_tiny_bert_tokenizer():
    tok, feats = _encoded("bert", "entity_marker_punct", [NESTED, CROSSING, IDENTICAL])
    tokens = [tok.convert_ids_to_tokens(feats.row(i).tolist()) for i in range(3)]
    assert tokens[0] == ["[CLS]", "@", "kim", "#", "lee", "#", "@", "works", "at", "samsung", "[SEP]"]
    # subject "kim lee": tokens 2-5 without the object's markers 3 and 5; object "lee": token 4; markers 1 and 3
    assert feats.ent[0].tolist() == [2, 6, 1, 4, 5, 3, 3, 4, 5, 6, 0, 0, 0, 0]
    assert tokens[1] == ["[CLS]", "@", "samsung", "#", "kim", "@", "lee", "#", "[SEP]"]
    # crossing: the subject leaves out the object's opening "#" (3), the object the subject's closing "@" (5)
    assert feats.ent[1].tolist() == [2, 5, 1, 4, 7, 3, 3, 4, 0, 0, 5, 6, 0, 0]
    assert tokens[2] == ["[CLS]", "@", "#", "kim", "#", "@", "works", "[SEP]"]
    # identical: the subject opens first, so both pool token 3 ("kim"); the subject leaves out "#" 2 and 4
    assert feats.ent[2].tolist() == [2, 5, 1, 3, 4, 2, 2, 3, 4, 5, 0, 0, 0, 0]


def _pooled(feats, i: int, role: int) -> list[int]:
    """Token positions an entity's mean pools: its range without its two skip ranges."""
    e = feats.ent[i]
    start, end = e[3 * role], e[3 * role + 1]
    skips = e[6 + 4 * role : 10 + 4 * role]
    return [t for t in range(start, end) if not (skips[0] <= t < skips[1] or skips[2] <= t < skips[3])]


@pytest.mark.parametrize("marker", OVERLAP_MARKERS)
@pytest.mark.parametrize("kind", KINDS)
def test_pooled_tokens_spell_the_entity_and_hold_no_marker(kind, marker):
    examples = list(CASES.values())
    tok, feats = _encoded(kind, marker, examples)
    marker_ids = set(tok.convert_tokens_to_ids(marker_tokens(marker, ["PER", "ORG"])))
    for i, ex in enumerate(examples):
        ids = feats.row(i)
        for role, span in ((0, ex.subj), (1, ex.obj)):
            pooled = _pooled(feats, i, role)
            assert not marker_ids & {int(ids[t]) for t in pooled}
            spelled = tok.convert_tokens_to_string(tok.convert_ids_to_tokens([int(ids[t]) for t in pooled]))
            # the entity's own characters, nothing else: a pooled punctuation marker (@, #, *, ^) or type name
            # would show here (the entity texts hold none); only the tokenizers' spaces are ignored
            strip = str.maketrans("", "", " \u2581\u0120")
            assert spelled.translate(strip) == ex.sentence[span.start : span.end].translate(strip), \
                (kind, marker, ex.id, role, spelled)


def test_entity_mask_cannot_show_overlapping_entities():
    with pytest.raises(ConfigError, match="entity_mask cannot show two overlapping entities"):
        mark(NESTED, "entity_mask")


@pytest.mark.parametrize("case", sorted(CASES))
def test_entity_swap_applies_the_same_rule_to_the_swapped_reading(case):
    ds = Dataset("mem", [CASES[case]], ("x", "y"))
    swapped = swap_entities(ds, np.array([0, 1])).examples[0]
    m = mark(swapped, "entity_marker")
    # the swapped reading is marked as if it had been read that way: the same rule, the roles exchanged
    by_hand = Example(swapped.id, swapped.sentence, swapped.subj, swapped.obj)
    assert m.text == mark(by_hand, "entity_marker").text
    assert m.text[slice(*m.subj_body)].replace("[E2]", "").replace("[/E2]", "").split() == \
        swapped.sentence[swapped.subj.start : swapped.subj.end].split()
    if case == "identical":  # identical spans: the subject of the swapped reading (the old object) opens first
        assert m.text.startswith("[E1] [E2] kim")


def test_every_variant_pools_its_entities_without_the_other_entitys_markers(monkeypatch, tiny_dir):
    """Each registered variant, on overlapping rows: the entity vectors its head gets are the mean of exactly the
    entity's own tokens (or its start marker, for start pooling); variants without entities pool nothing."""
    from kfold.core.config import Config
    from kfold.core.variants import list_variants
    from kfold.model import _models
    from kfold.training import build_model
    from tests.tiny import tiny_backbone

    path = tiny_backbone("bert", tiny_dir)
    tok = tiny_tokenizer("bert")
    tok.add_tokens(marker_tokens("entity_marker", []), special_tokens=True)
    examples = list(CASES.values())
    feats, _ = encode(Dataset("mem", examples, ("x", "y")), tok, "entity_marker", 64)
    width = int(feats.lengths.max())
    ids = torch.full((len(examples), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i in range(len(examples)):
        ids[i, : feats.lengths[i]] = torch.from_numpy(feats.row(i).astype(np.int64))
        mask[i, : feats.lengths[i]] = 1
    ent = torch.from_numpy(feats.ent.astype(np.int64))
    real = _models._entity_vector
    for variant in list_variants():
        calls = []

        def spy(hidden, start, end, marker, pool, skip=None):
            out = real(hidden, start, end, marker, pool, skip)
            calls.append((hidden.detach(), pool, out.detach()))
            return out

        monkeypatch.setattr(_models, "_entity_vector", spy)
        model = build_model(Config(backbone=path, variant=variant.name), 2, len(tok)).eval()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, ent=ent)["logits"]
        assert torch.isfinite(logits).all()
        if not variant.uses_entities:
            assert calls == [], variant.name
            continue
        assert len(calls) == 2, variant.name
        for role, (hidden, pool, got) in enumerate(calls):
            for i in range(len(examples)):
                if pool == "start":
                    want = hidden[i, feats.ent[i][3 * role + 2]]
                else:
                    want = hidden[i, _pooled(feats, i, role)].mean(0)
                torch.testing.assert_close(got[i], want, msg=f"{variant.name} row {i} entity {role + 1}")
