"""Chance levels: what the retrieval metrics of :mod:`atr_core.evaluation.metrics` are for a random ranking.

A model that ranks the candidates in a uniformly random order (no ties) gets, in expectation:

* t2a (one relevant clip among N): R@K = 100 min(K, N) / N; the 0-based rank is uniform on
  0..N-1, so MedR = MeanR = (N + 1) / 2 (1-based).
* a2t (a clip with q own captions among C captions; the rank is the best-ranked own caption):
  P(rank >= r) = prod_{i<q} (C - r - i) / (C - i), so R@K = 100 (1 - P(rank >= K)),
  MeanR = (C + 1) / (q + 1), and MedR is the median of that distribution plus 1. With clips of
  different caption counts the per-clip distributions are averaged.

R@1 and R@K at chance are what "R@10 = 97.8" must be read against on a small split: with 18 clips
chance R@10 is already 55.6.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from atr_core.evaluation.metrics import RECALL_KS


def _summary(p_at_least: np.ndarray) -> dict[str, float]:
    """Metrics from ``p_at_least[r] = P(0-based rank >= r)``, r = 0..n (last entry 0)."""
    cdf = 1.0 - p_at_least[1:]  # P(rank <= r) for r = 0..n-1
    out = {}
    for k in RECALL_KS:
        out[f"R{k}"] = 100.0 * float(cdf[min(k, len(cdf)) - 1])
    out["MedR"] = float(np.searchsorted(cdf, 0.5 - 1e-12)) + 1.0
    out["MeanR"] = float(p_at_least[1:].sum()) + 1.0
    return out


def t2a_chance(n_clips: int) -> dict[str, float]:
    """Chance R@K, MedR and MeanR of text-to-audio retrieval over ``n_clips`` clips."""
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    r = np.arange(n_clips + 1, dtype=np.float64)
    out = _summary(1.0 - r / n_clips)
    out["MedR"] = (n_clips + 1) / 2.0  # numpy's median of a uniform 0..N-1 rank, plus 1
    return out


def a2t_chance(captions_per_clip: Sequence[int]) -> dict[str, float]:
    """Chance R@K, MedR and MeanR of audio-to-text retrieval (best own caption among all captions)."""
    q = np.asarray([c for c in captions_per_clip if c > 0], dtype=np.int64)
    if q.size == 0:
        raise ValueError("a2t chance needs at least one clip with a caption")
    total = int(q.sum())
    r = np.arange(total + 1, dtype=np.float64)[None, :]
    p = np.ones((len(np.unique(q)), total + 1))
    for row, qi in enumerate(np.unique(q)):
        for i in range(qi):
            p[row] *= np.clip((total - r[0] - i) / (total - i), 0.0, None)
    weights = np.array([np.count_nonzero(q == qi) for qi in np.unique(q)], dtype=np.float64)
    mix = (weights[:, None] * p).sum(axis=0) / weights.sum()
    return _summary(mix)


def chance_levels(captions_per_clip: Sequence[int]) -> dict[str, dict[str, float]]:
    """Chance metrics of both directions for a split: one entry per clip, its caption count."""
    return {"t2a": t2a_chance(len(captions_per_clip)), "a2t": a2t_chance(captions_per_clip)}
