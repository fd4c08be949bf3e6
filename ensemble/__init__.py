"""ensemble: blend k-fold runs on their out-of-fold logits (soft voting, learned weights, Caruana
selection, rank averaging, hard voting, stacking) with honest nested-CV scores, and write them as leaderboard
files. Torch-free: imports ``kfold.core``, ``kfold.data`` and ``submissions``.
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _blenders
    "METHODS": "._blenders",
    "Blender": "._blenders",
    "CaruanaSelection": "._blenders",
    "HardVote": "._blenders",
    "RankAverage": "._blenders",
    "SoftVote": "._blenders",
    "Stacking": "._blenders",
    "WeightedBlend": "._blenders",
    "fit_temperature": "._blenders",
    "log_loss": "._blenders",
    "make_blender": "._blenders",
    # _honest
    "BlendScores": "._honest",
    "MethodResult": "._honest",
    "honest_oof": "._honest",
    "fold_fits": "._honest",
    "score_blend": "._honest",
    "compare_methods": "._honest",
    "choose_method": "._honest",
    "SIMPLICITY": "._honest",
    "TIE": "._honest",
    # _members
    "Members": "._members",
    "load_members": "._members",
    "select_runs": "._members",
    "resolve_test_source": "._members",
    "TEST_SOURCES": "._members",
    "DEFAULT_TEST_SOURCE": "._members",
    # _write
    "write_blend": "._write",
    "blend_fits": "._write",
    # _teachers
    "Teachers": "._teachers",
    "load_teachers": "._teachers",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
