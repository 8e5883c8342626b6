"""Training: data from shards and captions, the max-margin loss, optimisers and the epoch loop.

:mod:`.data` joins segment shards with captions into batches, :mod:`.losses` the bidirectional
max-margin ranking loss, :mod:`.optim` Ranger / Adam, :mod:`.loop` epochs, validation, model
selection, checkpoints and resume.
"""

from atr_core.training.data import Batch, ClipSource, collate, load_split
from atr_core.training.loop import TrainConfig, TrainResult, fit, resolve_schedule
from atr_core.training.losses import MaxMarginRankingLoss
from atr_core.training.optim import build_optimizer

__all__ = [
    "Batch",
    "ClipSource",
    "MaxMarginRankingLoss",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "collate",
    "fit",
    "load_split",
    "resolve_schedule",
]
