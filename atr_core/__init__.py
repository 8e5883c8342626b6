"""atr_core: the audio-text retrieval library (no Beam imports).

Audio decoding, CNN14/LMS segment features, text features, retrieval model modules,
losses, metrics and the Parquet shard schema shared by every pipeline stage.
"""

__version__ = "0.1.0"
