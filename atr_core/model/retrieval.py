"""The retrieval model: aggregation -> Gated Embedding Unit on each side, cosine similarity.

Reference sections 4.6 and 5. Both encoders output unit vectors of size ``embed_dim`` (2048), so
``similarity`` is the cosine similarity e_t . e_a (rows = captions, columns = clips).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atr_core import __version__
from atr_core.errors import InputError, SchemaError
from atr_core.model.aggregation import build_aggregation, check_aggregation

# The authors' segment caps (reference sections 1-2); applied by the data code, recorded in the config.
DEFAULT_MAX_SEGMENTS = {"audiocaps": 31, "clotho": 90}
FEATURE_DIMS = {"cnn14": 2048, "lms": 64}


class ContextGating(nn.Module):
    """Eq. 7 with the authors' BatchNorm: y = x * sigmoid(BN(W x + b))."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.batch_norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.batch_norm(self.fc(x)))


class GatedEmbeddingUnit(nn.Module):
    """Linear(in_dim -> out_dim) -> ContextGating(out_dim) -> L2 normalisation."""

    def __init__(self, in_dim: int, out_dim: int = 2048):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.gating = ContextGating(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.gating(self.fc(x)), dim=-1)


def l2renorm(x: torch.Tensor) -> torch.Tensor:
    """The authors' audio renormalisation before the GEU: x / (|x| + 1e-7), clipped to +-1000."""
    return (x / (x.norm(dim=-1, keepdim=True) + 1e-7)).clamp(-1000.0, 1000.0)


@dataclass
class ModelConfig:
    """Architecture and identity of a retrieval model (defaults: the paper's CNN14 + NetRVLAD system)."""

    audio_dim: int = 2048
    text_dim: int = 300
    embed_dim: int = 2048
    aggregation: str = "netrvlad"
    audio_clusters: int = 12
    text_clusters: int = 20
    lstm_hidden: int = 2048
    max_segments: int = DEFAULT_MAX_SEGMENTS["audiocaps"]
    max_words: int = 20
    use_mask: bool = True
    feature: str = "cnn14"
    checkpoint_sha256: str = ""
    word_vectors: dict = field(default_factory=dict)
    package_version: str = __version__

    def __post_init__(self) -> None:
        check_aggregation(self.aggregation)
        for name in ("audio_dim", "text_dim", "embed_dim", "audio_clusters", "text_clusters", "lstm_hidden"):
            if getattr(self, name) < 1:
                raise InputError(f"model config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_segments", "max_words"):
            if getattr(self, name) < 1:
                raise InputError(f"model config: {name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model config") -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys or wrongly typed values raise :class:`SchemaError`.

        Missing keys take their defaults.
        """
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise SchemaError(
                f"{where}: unknown model config key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}"
            )
        for key, value in data.items():
            expected = _JSON_TYPES[fields[key].type]
            ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            if not ok:
                raise SchemaError(
                    f"{where}: key {key!r} must be {expected.__name__}, got {type(value).__name__} {value!r}"
                )
        try:
            return cls(**data)
        except InputError as exc:
            raise SchemaError(f"{where}: {exc}") from exc


_JSON_TYPES: dict[str, type] = {"int": int, "str": str, "bool": bool, "dict": dict}


class AudioEncoder(nn.Module):
    """Audio side: aggregation -> l2renorm -> GEU. forward((B, T, D), (B, T) mask) -> (B, E) unit vectors."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pool = build_aggregation(
            config.aggregation, config.audio_dim, config.audio_clusters, config.lstm_hidden, config.use_mask
        )
        self.geu = GatedEmbeddingUnit(self.pool.out_dim, config.embed_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.geu(l2renorm(self.pool(x, mask)))


class TextEncoder(nn.Module):
    """Text side: aggregation -> GEU (no renormalisation). forward((B, N, 300), (B, N)) -> (B, E)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pool = build_aggregation(
            config.aggregation, config.text_dim, config.text_clusters, config.lstm_hidden, config.use_mask
        )
        self.geu = GatedEmbeddingUnit(self.pool.out_dim, config.embed_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.geu(self.pool(x, mask))


class RetrievalModel(nn.Module):
    """Audio and text encoders into one unit-sphere embedding space."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.audio = AudioEncoder(config)
        self.text = TextEncoder(config)

    def encode_audio(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, audio_dim) segments + (B, T) mask -> (B, embed_dim) unit vectors."""
        return self.audio(x, mask)

    def encode_text(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, text_dim) word vectors + (B, N) mask -> (B, embed_dim) unit vectors."""
        return self.text(x, mask)

    @staticmethod
    def similarity(text_emb: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (n_text, n_audio): rows = captions, columns = clips."""
        return text_emb @ audio_emb.T

    def forward(
        self,
        audio: torch.Tensor,
        audio_mask: torch.Tensor | None,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(text_emb, audio_emb) for a batch."""
        return self.encode_text(text, text_mask), self.encode_audio(audio, audio_mask)
