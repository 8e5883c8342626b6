"""Model inputs: variable-length (T, D) segment arrays zero-padded to one length, with a mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_segments(
    arrays: Sequence[np.ndarray], length: int, dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad (T_i, D) arrays to (B, length, D) of ``dtype`` with a (B, length) float32 0/1 mask.

    Arrays longer than ``length`` are cut to it. Training and embedding both pad every clip this
    way (to the model's ``max_segments``), so a clip's vector does not depend on its batch.
    """
    dim = arrays[0].shape[1]
    x = np.zeros((len(arrays), length, dim), dtype=dtype)
    mask = np.zeros((len(arrays), length), dtype=np.float32)
    for i, seg in enumerate(arrays):
        n = min(len(seg), length)
        x[i, :n] = seg[:n]
        mask[i, :n] = 1.0
    return x, mask
