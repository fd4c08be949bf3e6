"""From validated rows to model inputs: entity markers inserted by character position, the backbone's fast
tokenizer (and the short backbone names: the packaged MiniLM, and me5-small, built once per machine from the
``multilingual`` extra into a cache folder), token features with entity positions, crops and two-window rows,
the token cache, length-grouped batches with dynamic padding, and ``kfold check-data`` (which needs the
tokenizer for token lengths).

Imports ``kfold.core`` and ``kfold.data`` (and ``submissions`` nothing); the model layer consumes its
:class:`Features` and batches.
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _markers
    "Marked": "._markers",
    "mark": "._markers",
    "check_marker": "._markers",
    "marker_tokens": "._markers",
    "entity_types": "._markers",
    "add_marker_tokens": "._markers",
    # _reading
    "Reading": "._reading",
    "reading": "._reading",
    "backbone_reading": "._reading",
    # _tokenizer
    "BACKBONE_ALIASES": "._tokenizer",
    "resolve_backbone": "._tokenizer",
    "built_backbone_hash": "._tokenizer",
    "BUILD_RECORD": "._backbones",
    "folder_content": "._backbones",
    "build_hash": "._backbones",
    "backbone_slug": "._tokenizer",
    "load_tokenizer": "._tokenizer",
    "load_tokenizer_dir": "._tokenizer",
    # _encode
    "Features": "._encode",
    "encode": "._encode",
    "encode_cached": "._encode",
    "cache_key": "._encode",
    "concat_features": "._encode",
    "crop_note": "._encode",
    "special_template": "._encode",
    "WHOLE": "._encode",
    "ONE_WINDOW": "._encode",
    "TWO_WINDOWS": "._encode",
    "TOO_FAR": "._encode",
    "ENT_COLUMNS": "._encode",
    # _batching
    "length_grouped_batches": "._batching",
    "shuffled_batches": "._batching",
    "sorted_batches": "._batching",
    "collate": "._batching",
    "padding_share": "._batching",
    "split_micro": "._batching",
    "is_oom": "._batching",
    "find_micro_batch": "._batching",
    "accumulation_steps": "._batching",
    # _check
    "check_data": "._check",
    "token_stats": "._check",
    "label_lines": "._check",
    "TokenStats": "._check",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
