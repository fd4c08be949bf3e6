"""How well a backbone reads a file's text (issue 37): Korean on MiniLM's English WordPiece is cut below its
letters; the multilingual SentencePiece of me5-small reads it as words; `kfold check-data` and `kfold auto` say so."""

from __future__ import annotations

import pytest

from kfold.core.config import Config, chosen_keys
from kfold.encoding import backbone_reading, load_tokenizer, reading

KOREAN = ["삼성전자는 1969년에 설립되었다.", "대한민국 정부는 서울에 있다.", "이순신은 조선의 장군이었다."] * 4
ENGLISH = ["The company was founded in 1969 by its chairman.", "The child was wrapped in a cradle."] * 4


def _need_multilingual():
    try:
        from kfold.encoding._me5 import me5_sources

        me5_sources()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"me5-small needs the multilingual extra: {exc}")


def test_minilm_reads_korean_below_its_letters_and_english_well():
    tok = load_tokenizer("minilm", [])
    korean, english = reading(tok, KOREAN), reading(tok, ENGLISH)
    assert korean.poor and korean.tokens_per_letter > 1.5  # jamo: about two tokens per Hangul syllable
    assert not english.poor and english.tokens_per_letter < 0.6


@pytest.mark.slow
def test_the_notice_fires_for_korean_on_minilm_names_me5_small_and_not_the_other_way():
    _need_multilingual()
    notice, better = backbone_reading(KOREAN, "minilm")
    assert better == "me5-small"
    assert notice.startswith("note: backbone minilm reads this text badly (") and "(--backbone me5-small)" in notice
    assert backbone_reading(KOREAN, "me5-small") == (None, None)
    assert backbone_reading(ENGLISH, "minilm") == (None, None)


@pytest.mark.slow
def test_auto_without_a_chosen_backbone_takes_the_one_that_reads_korean(demo_dir):
    _need_multilingual()
    from types import SimpleNamespace

    from kfold.auto._auto import AutoSettings, _backbone_for
    from kfold.data._readers import read_dataset

    data = SimpleNamespace(train=read_dataset(demo_dir / "train.tsv"))  # the generated demo data is Korean
    lines: list[str] = []
    base = Config(backbone="minilm")
    unchosen = AutoSettings(base=base, budget=60, fmt="pstage2", backbone_chosen=False)
    assert _backbone_for(unchosen, base, data, lines.append).backbone == "me5-small"
    assert lines[-1] == "no backbone chosen: the runs use me5-small, which reads this text best (--backbone to choose)"
    chosen = AutoSettings(base=base, budget=60, fmt="pstage2", backbone_chosen=True)
    assert _backbone_for(chosen, base, data, lines.append).backbone == "minilm"


def test_a_backbone_is_chosen_by_a_flag_a_config_key_or_a_preset(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"backbone": "minilm", "lr": 0.001}')
    assert "backbone" in chosen_keys(cfg, {})
    assert "backbone" in chosen_keys(None, {"backbone": "x", "lr": None})
    assert "backbone" not in chosen_keys(None, {"backbone": None, "lr": 1e-3})
    assert "backbone" in chosen_keys(None, {}, "minilm-cpu")  # a shipped preset names its backbone
