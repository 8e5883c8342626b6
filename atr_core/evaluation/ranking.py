"""The audio side of a split's distributed ranking: its vectors as one matrix (no Beam)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)


@dataclass
class AudioIndex:
    """A split's audio vectors as one matrix (rows sorted by audio_id), shared as a side input."""

    ids: list[str]
    matrix: np.ndarray

    @classmethod
    def build(cls, items: Iterable[Any], dim: int) -> AudioIndex:
        """The index of ``items`` (records with ``.id`` and ``.vector``); ``(0, dim)`` when empty."""
        items = sorted(items, key=lambda v: v.id)
        mat = np.stack([v.vector for v in items]) if items else np.zeros((0, dim), np.float32)
        return cls([v.id for v in items], np.ascontiguousarray(mat, dtype=np.float32))

    def positions(self) -> dict[str, int]:
        """Row of each audio_id."""
        return {a: i for i, a in enumerate(self.ids)}
