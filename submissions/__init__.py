"""submissions: leaderboard file formats (pstage2, klue, semeval, generic), their writers and a checker.

Torch-free: imports ``kfold.core`` and ``kfold.data`` (a test file's ids).
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _formats
    "FORMATS": "._formats",
    "check_submission": "._formats",
    "check_text": "._formats",
    "predicted_labels": "._formats",
    "render_submission": "._formats",
    "test_ids_of": "._formats",
    "write_submission": "._formats",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
