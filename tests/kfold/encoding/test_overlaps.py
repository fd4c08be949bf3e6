"""Overlapping subject and object spans (nested, crossing, identical): markers at their positions by the fixed
rule, each entity pooled over its own tokens without the other entity's markers, entity swap by the same rule;
entities that start or end inside a word; all of it on the tiny tokenizers and on the real subword vocabularies
(MiniLM's WordPiece, XLM-R's SentencePiece), whose pieces can join a marker's punctuation to the text beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kfold.core.config import MARKERS
from kfold.core.errors import ConfigError
from kfold.data import Dataset, Example, Span, swap_entities
from kfold.encoding import TWO_WINDOWS, encode, mark, marker_tokens
from tests.real_tokenizers import REAL_KINDS, marked_tokenizer, normalized
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


def _ex(id_: str, sentence: str, subj: str, obj: str, subj_at: int = 0, obj_at: int = 0) -> Example:
    """A row whose entities are the first occurrences of ``subj`` / ``obj`` at or after the given positions."""
    s, o = sentence.index(subj, subj_at), sentence.index(obj, obj_at)
    return Example(id_, sentence, Span(s, s + len(subj), "ORG"), Span(o, o + len(obj), "PER"), "x")


#: entities that start or end inside a word, nested and crossing inside words, and markers whose punctuation XLM-R's
#: SentencePiece vocabulary would join to the text beside it ("▁#1", "▁(@" are pieces of it)
WORD_CASES = {
    "ko inside word": _ex("w1", "대한민국정부는 삼성전자를 지원했다", "정부", "삼성전자"),
    "ko word ending": _ex("w2", "삼성전자는 1969년에 설립되었다", "삼성전자", "1969년"),
    "en hyphenated": _ex("w3", "the Mercedes-Benz plant in Alabama", "Benz", "Alabama"),
    "en glued": _ex("w4", "YouTube hired Kim", "Tube", "Kim"),
    "nested ko #1": _ex("w5", "K리그1 우승팀은 울산이다", "K리그1", "K리그"),
    "crossing ko #1": _ex("w6", "K리그1 우승팀은 울산이다", "리그1 우승", "K리그"),
    "nested en (@": _ex("w7", "Samsung (Kim) was there", "Kim", "Samsung (Kim)"),
}
#: mark() puts a space between a marker and its entity, so a marker touches text only on its outer side
WORD_EXPECTED = {
    ("ko inside word", "entity_marker_punct"): "대한민국@ 정부 @는 # 삼성전자 #를 지원했다",
    ("ko word ending", "entity_marker_punct"): "@ 삼성전자 @는 # 1969년 #에 설립되었다",
    ("en hyphenated", "entity_marker_punct"): "the Mercedes-@ Benz @ plant in # Alabama #",
    ("en glued", "entity_marker_punct"): "You@ Tube @ hired # Kim #",
    ("nested ko #1", "entity_marker_punct"): "@ # K리그 #1 @ 우승팀은 울산이다",
    ("crossing ko #1", "entity_marker_punct"): "# K@ 리그 #1 우승 @팀은 울산이다",
    ("nested en (@", "entity_marker_punct"): "# Samsung (@ Kim @) # was there",
    ("ko inside word", "typed_entity_marker_punct"): "대한민국@ * ORG * 정부 @는 # ^ PER ^ 삼성전자 #를 지원했다",
    ("crossing ko #1", "typed_entity_marker_punct"): "# ^ PER ^ K@ * ORG * 리그 #1 우승 @팀은 울산이다",
    ("ko inside word", "entity_marker"): "대한민국[E1] 정부 [/E1]는 [E2] 삼성전자 [/E2]를 지원했다",
    ("en glued", "typed_entity_marker"): "You<S:ORG> Tube </S:ORG> hired <O:PER> Kim </O:PER>",
    ("en glued", "none"): "YouTube hired Kim",
}


@pytest.mark.parametrize("case,marker", sorted(EXPECTED))
def test_markers_follow_the_rule_on_overlapping_spans(case, marker):
    m = mark(CASES[case], marker)
    assert m.text == EXPECTED[(case, marker)]


@pytest.mark.parametrize("case,marker", sorted(WORD_EXPECTED))
def test_markers_touch_text_only_on_their_outer_side(case, marker):
    m = mark(WORD_CASES[case], marker)
    assert m.text == WORD_EXPECTED[(case, marker)]


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


def _encoded(kind: str, marker: str, examples, max_len: int = 64):
    tok = marked_tokenizer(kind, marker_tokens(marker, ["PER", "ORG"]))
    feats, _ = encode(Dataset("mem", list(examples), ("x", "y")), tok, marker, max_len)
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


def _check_pooled(tok, feats, examples, marker: str) -> None:
    """Each entity's pooled tokens spell the entity (no marker token inside, no piece of the text beside it), and
    its start token is its marker's first symbol (without a marker: the entity's first piece)."""
    marker_ids = set(tok.convert_tokens_to_ids(marker_tokens(marker, ["PER", "ORG"])))
    cont = getattr(tok.backend_tokenizer.model, "continuing_subword_prefix", None)  # WordPiece's "##"
    for i, ex in enumerate(examples):
        ids = feats.row(i)
        m = mark(ex, marker)
        for role, span, whole in ((0, ex.subj, m.subj_whole), (1, ex.obj, m.obj_whole)):
            pooled = _pooled(feats, i, role)
            assert not marker_ids & {int(ids[t]) for t in pooled}
            pieces = tok.convert_ids_to_tokens([int(ids[t]) for t in pooled])
            if pieces and cont and pieces[0].startswith(cont):  # an entity that starts inside a WordPiece word
                pieces[0] = pieces[0][len(cont) :]
            spelled = tok.convert_tokens_to_string(pieces)
            # the entity's own characters, nothing else: a pooled punctuation marker (@, #, *, ^), type name or
            # piece of the neighbouring word would show here (the entity texts hold none); only the tokenizers'
            # spaces and normalisation (MiniLM lower-cases and splits Hangul into jamo) are ignored
            assert normalized(tok, spelled) == normalized(tok, ex.sentence[span.start : span.end]), \
                (marker, ex.id, role, spelled)
            start = int(feats.ent[i][3 * role + 2])
            if marker == "none":
                assert pooled[0] == start, (ex.id, role)
            else:  # the start-marker token is the marker alone, not joined to the text before it
                assert tok.decode([int(ids[start])]).strip() == m.text[whole[0] :].split()[0], (marker, ex.id, role)


@pytest.mark.parametrize("marker", OVERLAP_MARKERS)
@pytest.mark.parametrize("kind", KINDS + REAL_KINDS)
def test_pooled_tokens_spell_the_entity_and_hold_no_marker(kind, marker):
    # the word cases hold Hangul the tiny vocabularies lack; the real ones read them
    examples = list(CASES.values()) + (list(WORD_CASES.values()) if kind in REAL_KINDS else [])
    tok, feats = _encoded(kind, marker, examples)
    _check_pooled(tok, feats, examples, marker)


def test_spaced_puts_the_space_outside_the_spans_that_meet_there():
    m = mark(WORD_CASES["nested ko #1"], "entity_marker_punct")  # "@ # K리그 #1 @ 우승팀은 울산이다"
    spaced = m.spaced([m.obj_whole[1]])  # the object's closing "#" and the "1" after it
    assert spaced.text == "@ # K리그 # 1 @ 우승팀은 울산이다"
    text = spaced.text
    assert text[slice(*spaced.obj_whole)] == "# K리그 #" and text[slice(*spaced.obj_body)] == "K리그"
    assert text[slice(*spaced.subj_whole)] == "@ # K리그 # 1 @" and text[slice(*spaced.subj_body)] == "# K리그 # 1"
    assert [text[a:b] for a, b in spaced.subj_skip] == ["# ", " #"]


@pytest.mark.parametrize("kind", REAL_KINDS)
def test_only_rows_with_a_joined_token_are_tokenised_apart(kind):
    """XLM-R's "▁#1" and "▁(@" join a marker to its neighbour: those rows get a space there, every other row is
    tokenised exactly as marked (MiniLM's WordPiece splits punctuation: it never joins a marker)."""
    examples = list(CASES.values()) + list(WORD_CASES.values())
    tok, feats = _encoded(kind, "entity_marker_punct", examples)
    apart = {}
    for i, ex in enumerate(examples):
        as_marked = tok(mark(ex, "entity_marker_punct").text)["input_ids"]
        if feats.row(i).tolist() != as_marked:
            apart[ex.id] = tok.convert_ids_to_tokens(feats.row(i).tolist())
    if kind == "minilm":
        assert apart == {}
    else:
        assert apart == {
            "w5": ["<s>", "▁@", "▁#", "▁K", "리그", "▁#", "▁1", "▁@", "▁우승", "팀", "은", "▁울산", "이다", "</s>"],
            "w6": ["<s>", "▁#", "▁K", "@", "▁", "리그", "▁#", "▁1", "▁우승", "▁@", "팀", "은", "▁울산", "이다", "</s>"],
            "w7": ["<s>", "▁#", "▁Samsung", "▁(", "▁@", "▁Kim", "▁@", ")", "▁#", "▁was", "▁there", "</s>"],
        }


KO_FILLER = "그 뒤로 회사는 반도체와 휴대전화와 가전제품을 만들며 여러 나라에 공장을 세우고 계속 성장했다. " * 4
EN_FILLER = "over the following decades the company built factories in many countries and kept growing. " * 4
#: entities further apart than max_len 48 in both real vocabularies: a window around each
FAR_CASES = [
    _ex("f1", f"대한민국정부는 {KO_FILLER}삼성전자를 지원했다", "정부", "삼성전자"),
    _ex("f2", f"the Mercedes-Benz plant {EN_FILLER}in Alabama", "Benz", "Alabama"),
    _ex("f3", f"Samsung (Kim) said {EN_FILLER}that K리그1 grew", "Kim", "K리그"),
    _ex("f4", f"K리그1 우승팀은 {KO_FILLER}울산이다", "K리그1", "울산"),
]


@pytest.mark.parametrize("marker", OVERLAP_MARKERS)
@pytest.mark.parametrize("kind", REAL_KINDS)
def test_two_windows_on_real_vocabularies_pool_each_entity(kind, marker):
    tok, feats = _encoded(kind, marker, FAR_CASES, max_len=48)
    assert feats.crop.tolist() == [TWO_WINDOWS] * len(FAR_CASES)
    assert feats.lengths.max() <= 48
    _check_pooled(tok, feats, FAR_CASES, marker)


def test_entity_mask_cannot_show_overlapping_entities():
    with pytest.raises(ConfigError, match="entity_mask cannot show two overlapping entities"):
        mark(NESTED, "entity_mask")


#: the swapped readings marked by hand (entity_marker): the same rule, the roles exchanged, so the old object is [E1]
SWAPPED = {
    "nested": ("[E2] kim [E1] lee [/E1] [/E2] works at samsung", "lee"),  # the subject now inside the object
    "crossing": ("[E2] samsung [E1] kim [/E2] lee [/E1]", "kim lee"),  # the object now opens first
    "identical": ("[E1] [E2] kim [/E2] [/E1] works", "kim"),  # identical spans: the (new) subject opens first
    "subject inside": ("[E1] kim [E2] lee [/E2] [/E1] works at samsung", "kim lee"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_entity_swap_applies_the_same_rule_to_the_swapped_reading(case):
    ds = Dataset("mem", [CASES[case]], ("x", "y"))
    swapped = swap_entities(ds, np.array([0, 1])).examples[0]
    assert (swapped.subj, swapped.obj) == (CASES[case].obj, CASES[case].subj)
    m = mark(swapped, "entity_marker")
    text, subject = SWAPPED[case]
    assert m.text == text
    assert m.text[slice(*m.subj_body)].replace("[E2]", "").replace("[/E2]", "").split() == subject.split()


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
