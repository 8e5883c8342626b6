"""Decoding and segment features: audio file -> 32 kHz mono waveform -> (T, D) segment embeddings.

:mod:`.decode` reads any soundfile format, :mod:`.cnn14` holds PANNs CNN14 and its checkpoint
loading, :mod:`.lms` the log-mel baseline, :mod:`.features` the registry of both, and
:mod:`.windows` the exact batched forward for clips of any length.
"""

from atr_core.audio.cnn14 import SAMPLE_RATE, SEGMENT_SAMPLES, load_cnn14, resolve_checkpoint
from atr_core.audio.decode import DecodedAudio, decode_audio, is_silent, pad_to_minimum
from atr_core.audio.features import FEATURES, build_feature_model, feature_identity, features_label
from atr_core.audio.windows import extract_batch, extract_clip, prepare_for_inference

__all__ = [
    "FEATURES",
    "SAMPLE_RATE",
    "SEGMENT_SAMPLES",
    "DecodedAudio",
    "build_feature_model",
    "decode_audio",
    "extract_batch",
    "extract_clip",
    "feature_identity",
    "features_label",
    "is_silent",
    "load_cnn14",
    "pad_to_minimum",
    "prepare_for_inference",
    "resolve_checkpoint",
]
