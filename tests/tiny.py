"""Tiny random encoders and tokenizers built inside the tests (no network, no downloads).

``tiny_backbone(kind, folder)`` saves a 2-layer model of the given family with its tokenizer, so the
toolkit loads it through the same Auto-class path as a real checkpoint.
"""

from __future__ import annotations

import string
from pathlib import Path

WORDS = ["the", "works", "at", "in", "of", "kim", "lee", "samsung", "seoul", "born", "founded", "by", "and", "is",
         "was", "a", "an", "company", "city", "person", "to", "for", "with", "on"]
CHARS = list(string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation) + \
    list("김이박철수영희삼성서울부산에서는가을를의와과태어났다설립했다회사도시사람")
KINDS = ("bert", "roberta", "xlmr", "electra")


def tiny_tokenizer(kind: str):
    """A fast tokenizer of the family, from an in-memory vocabulary."""
    from transformers import BertTokenizer, ElectraTokenizer, RobertaTokenizer, XLMRobertaTokenizer

    if kind in ("bert", "electra"):
        pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + CHARS + ["##" + c for c in CHARS]
        vocab = {t: i for i, t in enumerate(dict.fromkeys(pieces))}
        cls = BertTokenizer if kind == "bert" else ElectraTokenizer
        return cls(vocab=vocab, do_lower_case=False)
    if kind == "roberta":
        from tokenizers import pre_tokenizers

        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + alphabet)}
        return RobertaTokenizer(vocab=vocab, merges=[])
    if kind == "xlmr":
        pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0)]
        pieces += [("\u2581" + w, -1.0) for w in WORDS] + [(c, -2.0) for c in CHARS] + [("\u2581", -3.0)]
        return XLMRobertaTokenizer(vocab=pieces)
    raise ValueError(kind)


def tiny_config(kind: str, vocab_size: int, pad_id: int, dropout: float = 0.1):
    """A 2-layer, 32-wide config of the family."""
    from transformers import BertConfig, ElectraConfig, RobertaConfig, XLMRobertaConfig

    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=160, pad_token_id=pad_id,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if kind == "bert":
        return BertConfig(**common)
    if kind == "electra":
        return ElectraConfig(embedding_size=32, **common)
    cls = RobertaConfig if kind == "roberta" else XLMRobertaConfig
    return cls(bos_token_id=0, eos_token_id=2, type_vocab_size=1, **common)


def tiny_backbone(kind: str, folder: Path, with_pooler: bool = True, dropout: float = 0.1) -> str:
    """Save a random tiny encoder + tokenizer of ``kind`` under ``folder``; return the path.

    RoBERTa and XLM-R are saved without pooler weights, as their real checkpoints are.
    """
    import torch
    from transformers import AutoModel

    folder = Path(folder) / (kind if dropout == 0.1 else f"{kind}-dropout{dropout}")
    if (folder / "config.json").exists():
        return str(folder)
    tok = tiny_tokenizer(kind)
    config = tiny_config(kind, len(tok), tok.pad_token_id, dropout)
    torch.manual_seed(0)
    kwargs = {}
    if kind in ("bert", "roberta", "xlmr"):
        kwargs["add_pooling_layer"] = with_pooler and kind == "bert"
    model = AutoModel.from_config(config, **kwargs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
