"""ensemble: blend k-fold runs on their out-of-fold logits (soft voting, learned weights, Caruana
selection, rank averaging, hard voting, stacking) with honest nested-CV scores. Torch-free.
"""

from ._blenders import (METHODS, Blender, CaruanaSelection, HardVote, RankAverage, SoftVote, Stacking, WeightedBlend,
                        fit_temperature, log_loss, make_blender)
from ._honest import BlendScores, honest_oof, score_blend
from ._members import Members, load_members, select_runs

__all__ = ["METHODS", "Blender", "BlendScores", "CaruanaSelection", "HardVote", "Members", "RankAverage", "SoftVote",
           "Stacking", "WeightedBlend", "fit_temperature", "honest_oof", "load_members", "log_loss", "make_blender",
           "score_blend", "select_runs"]
