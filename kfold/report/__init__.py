"""``kfold report``: the runs table with bootstrap intervals, and the HTML page. Numbers are computed once
(``_compute``: small dataclasses), drawn (``_draw``: PNG bytes) and assembled (``_html``); the notebook API
returns the same numbers as DataFrames.

Reads the run store (``kfold.core``), blends' manifests and tuning studies; torch-free. Only the CLI and the
``kfold`` package import it.
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _table
    "build_report": "._table",
    "incomplete_runs": "._table",
    "write_report": "._table",
    "render": "._table",
    "RunRow": "._table",
    "seed_group": "._table",
    "table_notes": "._table",
    # _intervals
    "stratified_weights": "._intervals",
    "plain_weights": "._intervals",
    "scheme_for": "._intervals",
    "bc_interval": "._intervals",
    "INTERVAL_METHOD": "._intervals",
    # _compute
    "LabelScore": "._compute",
    "per_label": "._compute",
    "Confusions": "._compute",
    "confusions": "._compute",
    "Curve": "._compute",
    "training_curves": "._compute",
    "Suspect": "._compute",
    "confident_suspects": "._compute",
    "likely_label_errors": "._compute",
    "suspects_csv": "._compute",
    "BlendInfo": "._compute",
    "blends": "._compute",
    "DataInfo": "._compute",
    "data_info": "._compute",
    # _html
    "build_html": "._html",
    # _notebook
    "load_report": "._notebook",
    "load_oof": "._notebook",
    "suspect_labels": "._notebook",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
