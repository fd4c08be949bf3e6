"""Marker insertion by position, entity token positions from offsets, and cropping that keeps entities, on the tiny
tokenizers and on the real subword vocabularies (MiniLM's WordPiece, XLM-R's SentencePiece)."""

from __future__ import annotations

import numpy as np
import pytest

from kfold.core.config import MARKERS
from kfold.core.errors import ConfigError, DataError
from kfold.data._schema import Dataset, Example, Span
from kfold.encoding._encode import encode, encode_cached, special_template
from kfold.encoding._markers import check_marker, mark, marker_tokens
from tests.real_tokenizers import REAL_KINDS, marked_tokenizer, normalized
from tests.tiny import KINDS, tiny_tokenizer

EX = Example("1", "Kim works at Samsung in Seoul.", Span(0, 3, "PER"), Span(13, 20, "ORG"), "x")
# object first in the sentence, repeated entity text elsewhere (string replace would hit the wrong one)
EX_REV = Example("2", "Samsung hired Kim; Kim likes Samsung.", Span(14, 17, "PER"), Span(0, 7, "ORG"), "x")

EXPECTED = {
    "none": "Kim works at Samsung in Seoul.",
    "entity_marker": "[E1] Kim [/E1] works at [E2] Samsung [/E2] in Seoul.",
    "entity_marker_punct": "@ Kim @ works at # Samsung # in Seoul.",
    "typed_entity_marker": "<S:PER> Kim </S:PER> works at <O:ORG> Samsung </O:ORG> in Seoul.",
    "typed_entity_marker_punct": "@ * PER * Kim @ works at # ^ ORG ^ Samsung # in Seoul.",
    "entity_mask": "[SUBJ-PER] works at [OBJ-ORG] in Seoul.",
}


@pytest.mark.parametrize("marker", MARKERS)
def test_mark_text_and_spans(marker):
    m = mark(EX, marker)
    assert m.text == EXPECTED[marker]
    body = m.text[m.subj_body[0] : m.subj_body[1]]
    obj = m.text[m.obj_body[0] : m.obj_body[1]]
    if marker == "entity_mask":
        assert (body, obj) == ("[SUBJ-PER]", "[OBJ-ORG]")
    else:
        assert (body, obj) == ("Kim", "Samsung")
    whole = {"none": "Kim", "entity_marker": "[E1] Kim [/E1]", "entity_marker_punct": "@ Kim @",
             "typed_entity_marker": "<S:PER> Kim </S:PER>", "typed_entity_marker_punct": "@ * PER * Kim @",
             "entity_mask": "[SUBJ-PER]"}[marker]
    assert m.text[m.subj_whole[0] : m.subj_whole[1]] == whole


def test_mark_by_position_not_by_string():
    m = mark(EX_REV, "entity_marker")
    assert m.text == "[E2] Samsung [/E2] hired [E1] Kim [/E1]; Kim likes Samsung."


def test_typed_marker_needs_types():
    with pytest.raises(ConfigError, match="needs entity types"):
        check_marker("typed_entity_marker", has_types=False, where="train.tsv")
    check_marker("typed_entity_marker", has_types=True)
    with pytest.raises(ConfigError, match="unknown marker"):
        check_marker("entity_markers", True)


def _ds(*examples):
    return Dataset("mem", list(examples), ("x", "y"))


@pytest.mark.parametrize("kind", KINDS + REAL_KINDS)
@pytest.mark.parametrize("marker", MARKERS)
def test_entity_token_positions_are_exact(kind, marker):
    tok = marked_tokenizer(kind, marker_tokens(marker, ["PER", "ORG"]))
    feats, cropped = encode(_ds(EX, EX_REV), tok, marker, 64)
    assert cropped == 0
    for i, ex in enumerate((EX, EX_REV)):
        ids = feats.row(i).tolist()
        s0, s1, sm, o0, o1, om = feats.ent[i][:6]
        subj = tok.decode(ids[s0:s1]).replace(" ", "")
        obj = tok.decode(ids[o0:o1]).replace(" ", "")
        if marker == "entity_mask":
            assert subj == "[SUBJ-PER]" and obj == "[OBJ-ORG]"
        else:  # MiniLM's tokens are lower-cased
            assert normalized(tok, subj) == normalized(tok, ex.subj_text)
            assert normalized(tok, obj) == normalized(tok, ex.obj_text)
        first_marker = {"none": None, "entity_mask": None, "entity_marker": ("[E1]", "[E2]"),
                        "entity_marker_punct": ("@", "#"), "typed_entity_marker": ("<S:PER>", "<O:ORG>"),
                        "typed_entity_marker_punct": ("@", "#")}[marker]
        if first_marker:
            assert tok.decode([ids[sm]]).strip() == first_marker[0]
            assert tok.decode([ids[om]]).strip() == first_marker[1]
        else:  # no marker: the start token is the entity's first (non-empty) piece
            assert s0 <= sm < s1 and o0 <= om < o1
            first_s, first_o = tok.decode([ids[sm]]).strip(), tok.decode([ids[om]]).strip()
            assert first_s and subj.startswith(first_s) and first_o and obj.startswith(first_o)
            # the first piece with text (a SentencePiece word-start "▁" before it is skipped), not a later one
            assert not tok.decode(ids[s0:sm]).strip() and not tok.decode(ids[o0:om]).strip()
        prefix, suffix = special_template(tok)
        assert ids[: len(prefix)] == prefix and ids[len(ids) - len(suffix) :] == suffix


@pytest.mark.parametrize("kind", ["bert", "xlmr", *REAL_KINDS])
def test_cropping_keeps_both_entities_and_counts(kind):
    tok = marked_tokenizer(kind)
    filler = " ".join(["the company"] * 40)
    sentence = f"{filler} Kim works at Samsung {filler}"
    s = sentence.index("Kim")
    o = sentence.index("Samsung")
    long = Example("9", sentence, Span(s, s + 3), Span(o, o + 7), "x")
    feats, cropped = encode(_ds(EX, long), tok, "entity_marker_punct", 40)
    assert cropped == 1 and feats.cropped.tolist() == [False, True]
    assert feats.lengths[1] == 40
    ids = feats.row(1).tolist()
    s0, s1, sm, o0, o1, om = feats.ent[1][:6]
    assert normalized(tok, tok.decode(ids[s0:s1])) == normalized(tok, "Kim")
    assert normalized(tok, tok.decode(ids[o0:o1])) == normalized(tok, "Samsung")
    assert tok.decode([ids[sm]]).strip() == "@" and tok.decode([ids[om]]).strip() == "#"
    # the closing markers are inside the window too
    assert "@" in tok.decode(ids[s1:]) and "#" in tok.decode(ids[o1:])


def test_entities_too_far_apart_is_a_data_error_with_too_far_error():
    tok = tiny_tokenizer("bert")
    filler = " ".join(["the company"] * 30)
    sentence = f"Kim {filler} Samsung"
    far = Example("3", sentence, Span(0, 3), Span(len(sentence) - 7, len(sentence)), "x", row=5)
    with pytest.raises(DataError, match=r"mem: row 5, field 'sentence': found <entities \d+ tokens apart>.*--too-far two-windows"):
        encode(_ds(far), tok, "entity_marker_punct", 24, too_far="error")


def test_token_cache_round_trip(tmp_path):
    tok = tiny_tokenizer("bert")
    ds = _ds(EX, EX_REV)
    a, _, hit_a = encode_cached(ds, tok, "entity_marker_punct", 64, tmp_path)
    b, _, hit_b = encode_cached(ds, tok, "entity_marker_punct", 64, tmp_path)
    assert (hit_a, hit_b) == (False, True)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.ent, b.ent) and np.array_equal(a.offsets, b.offsets)
    # another marker or max_len is another cache entry
    _, _, hit_c = encode_cached(ds, tok, "entity_marker", 64, tmp_path)
    assert hit_c is False and len(list(tmp_path.glob("tokens-*.npz"))) == 2


@pytest.mark.parametrize("kind", ["bert", "xlmr", "roberta", *REAL_KINDS])
def test_random_sentences_keep_exact_entity_positions_when_cropped(kind):
    """Randomised: random words, random non-overlapping entities, every marker, a tight max_len."""
    from tests.tiny import WORDS

    rng = np.random.default_rng(7)
    tok = marked_tokenizer(kind, sorted({t for m in MARKERS for t in marker_tokens(m, ["PER", "ORG"])}))
    examples = []
    for i in range(60):
        words = [str(w) for w in rng.choice(WORDS + ["서울에서", "김철수는", "Acme,"], size=int(rng.integers(4, 40)))]
        a, b = sorted(rng.choice(len(words), size=2, replace=False))
        starts = np.cumsum([0] + [len(w) + 1 for w in words])
        s_span = (int(starts[a]), int(starts[a] + len(words[a])))
        o_span = (int(starts[b]), int(starts[b] + len(words[b])))
        if rng.random() < 0.5:
            s_span, o_span = o_span, s_span
        examples.append(Example(str(i), " ".join(words), Span(*s_span, "PER"), Span(*o_span, "ORG"), "x"))
    for marker in MARKERS:
        feats, _ = encode(_ds(*examples), tok, marker, 400)
        for i, ex in enumerate(examples):
            ids = feats.row(i).tolist()
            s0, s1, _, o0, o1, _ = feats.ent[i][:6]
            if marker != "entity_mask":
                assert normalized(tok, tok.decode(ids[s0:s1])) == normalized(tok, ex.subj_text), (marker, ex)
                assert normalized(tok, tok.decode(ids[o0:o1])) == normalized(tok, ex.obj_text), (marker, ex)
        # each row again under a tight max_len: a cropped row keeps exactly the same entity tokens (the real
        # vocabularies read these words as one piece each: a tighter limit crops as many rows)
        tight_len = 32 if kind in REAL_KINDS else 48
        checked = 0
        for i, ex in enumerate(examples):
            try:
                tight, cropped = encode(_ds(ex), tok, marker, tight_len)
            except DataError:
                continue  # this random pair lies too far apart for the tight limit: the documented error
            full_ids, crop_ids = feats.row(i).tolist(), tight.row(0).tolist()
            assert len(crop_ids) <= tight_len
            for a, b in ((0, 1), (3, 4)):
                assert full_ids[feats.ent[i][a]:feats.ent[i][b]] == crop_ids[tight.ent[0][a]:tight.ent[0][b]]
            assert full_ids[feats.ent[i][2]] == crop_ids[tight.ent[0][2]]
            assert full_ids[feats.ent[i][5]] == crop_ids[tight.ent[0][5]]
            checked += cropped
        assert checked >= 10, (marker, checked)  # enough rows were actually cropped
