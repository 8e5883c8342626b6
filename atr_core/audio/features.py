"""Feature registry: build the (B, L) -> (B, T, D) segment model for ``cnn14`` or ``lms``.

Both run at 32 kHz with 0.32 s segments (T = num_segments(L)); use the exact
windowed/batched runners of :mod:`atr_core.audio.windows` to apply them to clips.
"""

from __future__ import annotations

import torch
from torch import nn

from atr_core.audio import cnn14
from atr_core.audio.cnn14 import (
    EMBED_DIM,
    MEL_BINS,
    CheckpointInfo,
    Cnn14Segments,
    load_cnn14,
    resolve_checkpoint,
)
from atr_core.audio.lms import LogMelSegments
from atr_core.audio.windows import prepare_for_inference
from atr_core.errors import InputError
from atr_core.formats.shards import ShardIdentity
from atr_core.runtime.device import resolve_device

FEATURES: dict[str, int] = {"cnn14": EMBED_DIM, "lms": MEL_BINS}

__all__ = [
    "FEATURES",
    "CheckpointInfo",
    "Cnn14Segments",
    "LogMelSegments",
    "build_feature_model",
    "check_feature",
    "feature_identity",
    "num_segments",
    "prepare_for_inference",
    "resolve_checkpoint",
]


def check_feature(feature: str) -> str:
    """Return ``feature`` if it is registered, else raise :class:`InputError` listing the choices."""
    if feature not in FEATURES:
        raise InputError(f"unknown feature {feature!r}; choose one of {sorted(FEATURES)}")
    return feature


def num_segments(feature: str, n_samples: int) -> int:
    """T for a clip of ``n_samples`` at 32 kHz: the same 0.32 s grid for every feature."""
    check_feature(feature)
    return cnn14.num_segments(n_samples)


def build_feature_model(
    feature: str, checkpoint: CheckpointInfo | None, device: str | torch.device = "cpu"
) -> nn.Module:
    """The eval-mode, gradient-free model mapping (B, L) -> (B, T, FEATURES[feature]) on ``device``.

    ``cnn14`` needs a resolved ``checkpoint`` (see :func:`resolve_checkpoint`, which raises a
    :class:`~atr_core.errors.CheckpointError` explaining where to get the weights when it
    is missing); ``lms`` has no weights and ignores it.
    """
    check_feature(feature)
    dev = resolve_device(device)
    if feature == "cnn14":
        info = checkpoint if checkpoint is not None else resolve_checkpoint(None)
        return load_cnn14(info, dev)
    model = LogMelSegments().to(dev)
    model.requires_grad_(False)
    return model


def feature_identity(
    feature: str, checkpoint: CheckpointInfo | None, dtype: str = "float16"
) -> ShardIdentity:
    """The shard identity (feature, embedding_dim, checkpoint spec and sha256) of extracted features."""
    check_feature(feature)
    ckpt = checkpoint if feature == "cnn14" else None
    return ShardIdentity(
        feature=feature,
        embedding_dim=FEATURES[feature],
        dtype=dtype,
        checkpoint=ckpt.spec if ckpt else "",
        checkpoint_sha256=ckpt.sha256 if ckpt else "",
    )


def features_label(feature: str, checkpoint: str | None = None) -> str:
    """What segment features are, in words (consoles, report titles): LMS, or CNN14 and its weights."""
    if feature == "lms":
        return "LMS features (64-bin log-mel, the paper's baseline; no CNN14)"
    if feature != "cnn14":
        return f"{feature} features"
    if checkpoint and checkpoint.startswith("random:"):
        return f"CNN14 features with RANDOM weights ({checkpoint}, untrained)"
    name = str(checkpoint or "").replace("\\", "/").rsplit("/", 1)[-1]
    return f"CNN14 features ({name})" if name else "CNN14 features"
