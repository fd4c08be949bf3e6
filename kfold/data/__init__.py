"""Rows from files: the example schema, the readers of the four input formats, row validation with offset
repair (every problem of a file listed at once), label files, the generated demo data, loading a config's
training and test files, and entity swap.

A file becomes a :class:`Dataset` of validated :class:`Example` rows here; ``kfold.encoding`` marks and
tokenises them. Torch-free; imports only ``kfold.core``.
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _schema
    "Span": "._schema",
    "Example": "._schema",
    "Dataset": "._schema",
    "Repair": "._schema",
    "Overlap": "._schema",
    "Skipped": "._schema",
    "overlap_kind": "._schema",
    # _labels
    "read_label_file": "._labels",
    "find_label_file": "._labels",
    "BLIND": "._labels",
    "LABEL_FILE_NAMES": "._labels",
    # _validate
    "RawRow": "._validate",
    "build_examples": "._validate",
    "nearest_occurrence": "._validate",
    "OFFSET_MODES": "._validate",
    "OVERLAP_MODES": "._validate",
    "OVERLAP_MARKERS": "._validate",
    "BAD_ROWS_MODES": "._validate",
    # _readers
    "read_dataset": "._readers",
    "detect_format": "._readers",
    "parse_columns": "._readers",
    "dataset_summary": "._readers",
    "FORMATS": "._readers",
    # _demo
    "write_demo_data": "._demo",
    # _load
    "LoadedData": "._load",
    "load_data": "._load",
    "demo_paths": "._load",
    "read_settings": "._load",
    "write_lists": "._load",
    "list_path": "._load",
    "data_notes": "._load",
    "with_skip_hint": "._load",
    "LIST_COLUMNS": "._load",
    "DEMO_FOLDER": "._load",
    # _swap
    "inverse_labels": "._swap",
    "swap_entities": "._swap",
    "unswap_logits": "._swap",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
