"""The retrieval model: aggregation modules, the two encoders, and the trained-model directory.

:mod:`.aggregation` pools (B, N, D) sequences (mean, max, LSTM, NetVLAD, NetRVLAD);
:mod:`.retrieval` holds ``ModelConfig`` and ``RetrievalModel`` (aggregation -> GEU on each side);
:mod:`.directory` saves and loads the model directory that train writes and embed/search read.
"""

from atr_core.model.aggregation import AGGREGATIONS, build_aggregation
from atr_core.model.directory import load_model, read_config, save_model
from atr_core.model.retrieval import ModelConfig, RetrievalModel

__all__ = [
    "AGGREGATIONS",
    "ModelConfig",
    "RetrievalModel",
    "build_aggregation",
    "load_model",
    "read_config",
    "save_model",
]
