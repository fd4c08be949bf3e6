"""The network: backbones loaded through the Auto classes (never a weight initialised at random), the relation
heads of the variant registry (``kfold.core.variants``), losses, and the optimiser's parameter groups, schedule
and weight averages.

Imports ``kfold.core`` and ``kfold.encoding``; ``kfold.training`` drives it.
"""

from __future__ import annotations

from kfold.core.exports import lazy_exports

_EXPORTS = {
    # _models
    "load_backbone": "._models",
    "quiet_loading": "._models",
    "RelationModel": "._models",
    "ProjectionLayer": "._models",
    "combine_vectors": "._models",
    "enable_checkpointing": "._models",
    "DROPOUT_KEYS": "._models",
    # _losses
    "RelationLoss": "._losses",
    "class_weight_vector": "._losses",
    "rdrop_kl": "._losses",
    "LOSSES": "._losses",
    "CLASS_WEIGHTS": "._losses",
    # _optim
    "param_groups": "._optim",
    "linear_schedule": "._optim",
    "weight_average": "._optim",
    "layer_depth": "._optim",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
