"""Retrieval metrics (reference.md section 8), exact and mergeable across caption partitions.

Definitions (authors' ``model/metric.py``):

* t2a: one query per caption, candidates the N clips. The 0-based rank is tie-averaged: ``#strictly
  better + (#tied - 1) / 2``, ties counted among all candidates including the ground truth itself.
* a2t: one query per clip that has at least one caption, candidates all captions. The rank is the
  minimum over the clip's own captions of their tie-averaged ranks. Clips without captions are
  excluded and counted (``num_excluded``).
* From a 0-based rank vector rho over M queries: R@1 = 100 |rho == 0| / M (a tie for first is not a
  hit), R@K = 100 |rho < K| / M for K = 5, 10, 50, MedR = median(rho) + 1, MeanR = mean(rho) + 1,
  geometric mean of (R@1, R@5, R@10).

Two ways to compute them:

* :func:`retrieval_metrics` / :func:`rank_vectors` take a full similarity matrix (captions x clips).
* :func:`blocked_retrieval_metrics` / :func:`blocked_rank_vectors` take embeddings and never hold
  more than ``block_size x n_clips`` similarities. They are the single-process composition of the
  distributable pieces below (caption partitions; audio vectors shared):

  1. :func:`own_score_summary` per partition, merged with :meth:`OwnScoreSummary.merge`;
     :func:`a2t_window` turns the merged summary into per-clip score windows.
  2. :func:`score_block` per partition (one matmul): t2a ranks of the partition's captions and an
     :class:`A2TCounts`, merged with :meth:`A2TCounts.merge` (counts add up).
  3. :func:`a2t_ranks_from_counts` gives the exact a2t ranks.

Why windows: BLAS ``sgemm`` rounds an element differently depending on its position in the call
(measured with numpy's OpenBLAS here: the same vector pair gives results differing in the last
bits), so own-caption scores cannot be recomputed "the same way" elsewhere. Step 1 only locates each
clip's best own score approximately (float64 dot products); step 2 counts captions clearly above
that window and keeps the few scores inside it; step 3 compares those with the best own score as
the matmul of step 2 produced it. The result equals :func:`retrieval_metrics` on the matrix built
from the same block products, bit for bit; a window too narrow for the rounding is detected and
raises instead of giving a wrong count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from atr_core.errors import AtrError, InputError

RECALL_KS = (1, 5, 10, 50)
METRIC_KEYS = ("R1", "R5", "R10", "R50", "MedR", "MeanR", "geometric_mean", "num_queries")
DEFAULT_BLOCK_SIZE = 1024  # captions per block for workers that size blocks themselves
BLOCK_BYTES = 256 * 2**20  # most similarities held per block by the blocked path (auto block size)
CACHE_BLOCK_BYTES = 32 * 2**20  # preferred block: its comparisons run while it is still in cache
MIN_PREFERRED_ROWS = 1024  # fewer rows make the per-block matmul and bookkeeping inefficient
_WINDOW_COLS = 4096
DEFAULT_WINDOW_ULPS = 64.0
_F32_EPS = 2.0**-24  # unit roundoff of float32
_F64_EPS = 2.0**-53


# --------------------------------------------------------------------------- validation


def _check_caption_to_clip(caption_to_clip: Any, n_captions: int, n_clips: int) -> np.ndarray:
    c2c = np.asarray(caption_to_clip)
    if c2c.ndim != 1 or c2c.shape[0] != n_captions:
        raise InputError(
            f"caption_to_clip has shape {c2c.shape}, expected ({n_captions},) (one clip index per caption)"
        )
    if n_captions and not np.issubdtype(c2c.dtype, np.integer):
        raise InputError(f"caption_to_clip must hold integer clip indices, got dtype {c2c.dtype}")
    c2c = c2c.astype(np.int64, copy=False)
    bad = np.flatnonzero((c2c < 0) | (c2c >= n_clips))
    if bad.size:
        r = int(bad[0])
        raise InputError(
            f"caption_to_clip row {r} points to clip {int(c2c[r])}, outside 0..{n_clips - 1} "
            f"({bad.size} such rows)"
        )
    return c2c


def _check_finite(arr: np.ndarray, what: str, row_offset: int = 0) -> None:
    if not np.isfinite(arr).all():
        r, c = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"{what} has a non-finite value at row {int(r) + row_offset}, column {int(c)}")


def _as_f32_matrix(x: Any, what: str) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"{what} must be 2-D (rows, dim), got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------- summaries


def summarize_ranks(ranks: Any) -> dict[str, float | int]:
    """R@1/5/10/50, MedR, MeanR, geometric mean of (R@1, R@5, R@10) and M from 0-based ranks.

    R@1 counts only rank exactly 0 (a tie for first, rank 0.5, is not a hit); the other recalls
    count ``rank < K``. MedR and MeanR are 1-based. Raises :class:`InputError` for an empty vector.
    """
    rho = np.asarray(ranks, dtype=np.float64).ravel()
    if rho.size == 0:
        raise InputError("cannot summarise an empty rank vector (no queries)")
    if not np.isfinite(rho).all() or (rho < 0).any():
        raise InputError("rank vector holds negative or non-finite values")
    m = rho.size
    out: dict[str, float | int] = {"R1": 100.0 * int(np.count_nonzero(rho == 0)) / m}
    for k in RECALL_KS[1:]:
        out[f"R{k}"] = 100.0 * int(np.count_nonzero(rho < k)) / m
    out["MedR"] = float(np.median(rho)) + 1.0
    out["MeanR"] = float(np.mean(rho)) + 1.0
    out["geometric_mean"] = float((out["R1"] * out["R5"] * out["R10"]) ** (1.0 / 3.0))
    out["num_queries"] = int(m)
    return out


def metrics_from_ranks(ranks: Mapping[str, np.ndarray], n_clips: int) -> dict[str, dict[str, float | int]]:
    """The metrics dict (``t2a``, ``a2t``) from a :func:`rank_vectors`-style dict.

    Each direction has the :data:`METRIC_KEYS` plus ``num_excluded`` (a2t: clips without captions;
    t2a: always 0).
    """
    t2a = summarize_ranks(ranks["t2a"])
    t2a["num_excluded"] = 0
    a2t = summarize_ranks(ranks["a2t"])
    a2t["num_excluded"] = int(n_clips - len(ranks["a2t"]))
    return {"t2a": t2a, "a2t": a2t}


AGGREGATE_STATS = ("mean", "std", "values")


def aggregate_runs(
    runs: Sequence[Mapping[str, Any]], ddof: int = 0, stat: str | None = None
) -> dict[str, Any]:
    """Mean and standard deviation of every numeric leaf over several runs (e.g. seeds).

    ``runs`` are metrics dicts of identical structure. Returns the same nesting with each number
    replaced by ``{"mean", "std", "values"}``, or with ``stat`` (one of those keys, e.g. ``"mean"``)
    by that value alone: a metrics dict of the means. ``ddof=0`` is numpy's default population std.
    """
    if not runs:
        raise InputError("aggregate_runs needs at least one run")
    if stat is not None and stat not in AGGREGATE_STATS:
        raise InputError(f"aggregate_runs: stat must be one of {', '.join(AGGREGATE_STATS)}, got {stat!r}")
    return _aggregate([dict(r) for r in runs], ddof, path="", stat=stat)


def _aggregate(nodes: list[Any], ddof: int, path: str, stat: str | None = None) -> Any:
    first = nodes[0]
    if isinstance(first, Mapping):
        keys = list(first.keys())
        for i, n in enumerate(nodes):
            if not isinstance(n, Mapping) or set(n.keys()) != set(keys):
                raise InputError(f"run {i} does not have the same keys as run 0 at '{path or '/'}'")
        return {k: _aggregate([n[k] for n in nodes], ddof, f"{path}/{k}", stat) for k in keys}
    values = []
    for i, n in enumerate(nodes):
        if isinstance(n, bool) or not isinstance(n, (int, float, np.integer, np.floating)):
            raise InputError(f"run {i} has a non-numeric value {n!r} at '{path}'")
        values.append(float(n))
    arr = np.asarray(values)
    std = float(arr.std(ddof=ddof)) if arr.size > ddof else float("nan")
    leaf = {"mean": float(arr.mean()), "std": std, "values": values}
    return leaf if stat is None else leaf[stat]


# --------------------------------------------------------------------------- full matrix


def similarities(text_emb: Any, audio_emb: Any) -> np.ndarray:
    """Float32 similarity matrix ``text_emb @ audio_emb.T`` (captions x clips), via BLAS sgemm."""
    t = _as_f32_matrix(text_emb, "text embeddings")
    a = _as_f32_matrix(audio_emb, "audio embeddings")
    if t.shape[1] != a.shape[1]:
        raise InputError(f"text dim {t.shape[1]} != audio dim {a.shape[1]}")
    return t @ a.T


def _count(mask: np.ndarray, axis: int) -> np.ndarray:
    return np.add.reduce(mask, axis=axis, dtype=np.int64)


def _cmp_count(op: np.ufunc, x: np.ndarray, y: np.ndarray, axis: int, buf: np.ndarray | None) -> np.ndarray:
    """``count(op(x, y))`` along ``axis``, writing the mask into ``buf`` when given (no page faults)."""
    mask = op(x, y) if buf is None else op(x, y, out=buf[: x.shape[0]])
    return _count(mask, axis)


def _t2a_from_scores(scores: np.ndarray, clip_ids: np.ndarray, buf: np.ndarray | None = None) -> np.ndarray:
    """Tie-averaged 0-based t2a ranks of each row of ``scores`` for its own clip."""
    own = scores[np.arange(scores.shape[0]), clip_ids][:, None]
    greater = _cmp_count(np.greater, scores, own, 1, buf)
    tied = _cmp_count(np.equal, scores, own, 1, buf)
    return greater + (tied - 1) / 2.0


def rank_vectors(
    sims: Any, caption_to_clip: Any, *, per_caption: bool = False
) -> dict[str, np.ndarray]:
    """Raw 0-based tie-averaged rank vectors from a full similarity matrix.

    ``sims`` is (n_captions, n_clips), row r = caption r, column j = clip j; ``caption_to_clip[r]``
    is caption r's clip. Returns ``t2a`` (n_captions,), ``a2t`` (one per clip with captions: the
    minimum over its own captions), ``a2t_clips`` (the clip index of each a2t entry) and, with
    ``per_caption=True``, ``a2t_per_caption`` (n_captions,): each caption's rank in its clip's query.
    """
    s = np.asarray(sims)
    if s.ndim != 2 or not np.issubdtype(s.dtype, np.floating):
        raise InputError(f"similarities must be a 2-D float array, got shape {s.shape} dtype {s.dtype}")
    n_captions, n_clips = s.shape
    if n_captions == 0 or n_clips == 0:
        raise InputError(f"similarity matrix {s.shape} has no captions or no clips")
    c2c = _check_caption_to_clip(caption_to_clip, n_captions, n_clips)
    _check_finite(s, "similarity matrix")

    out = {"t2a": _t2a_from_scores(s, c2c)}
    own = s[np.arange(n_captions), c2c]
    # The rank is strictly decreasing in the score, so the minimum rank over a clip's captions is
    # the rank of its best own score.
    best = np.full(n_clips, -np.inf, dtype=s.dtype)
    np.maximum.at(best, c2c, own)
    clips = np.flatnonzero(np.bincount(c2c, minlength=n_clips) > 0)
    if clips.size == n_clips:
        best_row, cols = best[None, :], s
    else:
        best_row, cols = best[clips][None, :], s[:, clips]
    greater = _count(cols > best_row, axis=0)
    tied = _count(cols == best_row, axis=0)
    out["a2t"] = greater + (tied - 1) / 2.0
    out["a2t_clips"] = clips.astype(np.int64)
    if per_caption:
        out["a2t_per_caption"] = _a2t_per_caption(s, c2c, own)
    return out


def _a2t_per_caption(s: np.ndarray, c2c: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Rank of each caption within its clip's a2t query (column), tie-averaged."""
    n_captions, n_clips = s.shape
    order = np.argsort(c2c, kind="stable")
    counts = np.bincount(c2c, minlength=n_clips)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.empty(n_captions, dtype=np.int64)
    slot[order] = np.arange(n_captions) - np.repeat(starts, counts)
    ranks = np.empty(n_captions, dtype=np.float64)
    for q in range(int(counts.max())):
        rows = np.flatnonzero(slot == q)
        clips = c2c[rows]
        thr = own[rows][None, :]
        cols = s[:, clips]
        ranks[rows] = _count(cols > thr, axis=0) + (_count(cols == thr, axis=0) - 1) / 2.0
    return ranks


def retrieval_metrics(sims: Any, caption_to_clip: Any) -> dict[str, dict[str, float | int]]:
    """Text-to-audio and audio-to-text retrieval metrics from a full similarity matrix.

    Args:
        sims: (n_captions, n_clips) similarities, higher is more similar.
        caption_to_clip: (n_captions,) the index of each caption's own clip.

    Returns:
        ``{"t2a": {...}, "a2t": {...}}``, each with R1, R5, R10, R50 (percent), MedR, MeanR
        (1-based), geometric_mean, num_queries and num_excluded (docs/metrics.md).

    Raises:
        InputError: shapes that do not fit, or a caption index outside the clips.
    """
    ranks = rank_vectors(sims, caption_to_clip)
    return metrics_from_ranks(ranks, np.asarray(sims).shape[1])


# --------------------------------------------------------------------------- mergeable pieces


@dataclass
class OwnScoreSummary:
    """Approximate best own-caption score per clip (pass 1); merge partitions with :meth:`merge`."""

    best: np.ndarray  # (n_clips,) float64, -inf where no own caption was seen
    text_norm: np.ndarray  # (n_clips,) float64, max norm of the own captions seen
    num_captions: np.ndarray  # (n_clips,) int64, own captions seen

    def merge(self, other: OwnScoreSummary) -> OwnScoreSummary:
        """Combine two partitions' summaries (associative, commutative)."""
        _same_len(self.best, other.best, "OwnScoreSummary")
        return OwnScoreSummary(
            np.maximum(self.best, other.best),
            np.maximum(self.text_norm, other.text_norm),
            self.num_captions + other.num_captions,
        )

    @staticmethod
    def merge_all(parts: Iterable[OwnScoreSummary]) -> OwnScoreSummary:
        """Merge any number of summaries (at least one)."""
        return _merge_all(parts, "OwnScoreSummary")


@dataclass(frozen=True)
class A2TWindow:
    """Per-clip score window [lo, hi] (float32) around the best own-caption score; NaN: no caption."""

    lo: np.ndarray
    hi: np.ndarray
    num_captions: np.ndarray  # (n_clips,) int64 own captions per clip

    @property
    def n_clips(self) -> int:
        return int(self.lo.shape[0])


@dataclass
class A2TCounts:
    """Mergeable a2t partial counts over a set of captions (pass 2).

    ``above[j]`` counts captions scoring above clip j's window; ``window_clip``/``window_score``
    list the scores inside the windows; ``own_max[j]`` is the best own-caption score of clip j seen
    (-inf if none); ``num_captions`` counts the captions scored.
    """

    above: np.ndarray
    own_max: np.ndarray
    window_clip: np.ndarray
    window_score: np.ndarray
    num_captions: int

    def merge(self, other: A2TCounts) -> A2TCounts:
        """Combine two partitions' counts (associative, commutative up to window order)."""
        _same_len(self.above, other.above, "A2TCounts")
        return A2TCounts(
            self.above + other.above,
            np.maximum(self.own_max, other.own_max),
            np.concatenate([self.window_clip, other.window_clip]),
            np.concatenate([self.window_score, other.window_score]),
            self.num_captions + other.num_captions,
        )

    @staticmethod
    def merge_all(parts: Iterable[A2TCounts]) -> A2TCounts:
        """Merge any number of partial counts (at least one), consuming an iterator lazily."""
        above = own_max = None
        clips: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        total = 0
        for p in parts:
            if above is None:
                above, own_max = p.above.copy(), p.own_max.copy()
            else:
                _same_len(above, p.above, "A2TCounts")
                above += p.above
                np.maximum(own_max, p.own_max, out=own_max)
            clips.append(p.window_clip)
            scores.append(p.window_score)
            total += p.num_captions
        if above is None:
            raise InputError("no A2TCounts to merge")
        return A2TCounts(above, own_max, np.concatenate(clips), np.concatenate(scores), total)


def _same_len(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"cannot merge {what} for {a.shape[0]} clips with one for {b.shape[0]} clips")


def _merge_all(parts: Iterable[Any], what: str) -> Any:
    it = iter(parts)
    try:
        acc = next(it)
    except StopIteration:
        raise InputError(f"no {what} to merge") from None
    for p in it:
        acc = acc.merge(p)
    return acc


def _block_inputs(
    text_block: Any, audio_emb: np.ndarray, clip_ids_of_block: Any, row_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    t = _as_f32_matrix(text_block, "text embeddings")
    if t.shape[1] != audio_emb.shape[1]:
        raise InputError(f"text dim {t.shape[1]} != audio dim {audio_emb.shape[1]}")
    _check_finite(t, "text embeddings", row_offset)
    ids = np.asarray(clip_ids_of_block)
    try:
        ids = _check_caption_to_clip(ids, t.shape[0], audio_emb.shape[0])
    except InputError as exc:
        raise InputError(f"{exc} (caption block starting at row {row_offset})") from None
    return t, ids


def _audio(audio_emb: Any) -> np.ndarray:
    a = _as_f32_matrix(audio_emb, "audio embeddings")
    if a.shape[0] == 0:
        raise InputError("no audio embeddings (0 clips)")
    _check_finite(a, "audio embeddings")
    return a


def own_score_summary(
    text_block: Any, audio_emb: Any, clip_ids_of_block: Any, *, row_offset: int = 0
) -> OwnScoreSummary:
    """Pass 1 over a caption partition: float64 own-caption scores, max per clip, and norms.

    Cheap (one dot product per caption). ``row_offset`` only labels error messages.
    """
    a = _audio(audio_emb)
    return _own_score_summary(*_block_inputs(text_block, a, clip_ids_of_block, row_offset), a)


def _own_score_summary(t: np.ndarray, ids: np.ndarray, a: np.ndarray, chunk: int = 1024) -> OwnScoreSummary:
    n_clips = a.shape[0]
    best = np.full(n_clips, -np.inf)
    norm = np.zeros(n_clips)
    for i in range(0, t.shape[0], chunk):  # float64 accumulation without float64 copies
        tc, ic = t[i : i + chunk], ids[i : i + chunk]
        np.maximum.at(best, ic, np.einsum("ij,ij->i", tc, a[ic], dtype=np.float64))
        np.maximum.at(norm, ic, np.sqrt(np.einsum("ij,ij->i", tc, tc, dtype=np.float64)))
    return OwnScoreSummary(best, norm, np.bincount(ids, minlength=n_clips).astype(np.int64))


def a2t_window(
    summary: OwnScoreSummary, audio_emb: Any, *, window_ulps: float = DEFAULT_WINDOW_ULPS
) -> A2TWindow:
    """Per-clip windows from the merged pass-1 summary.

    Half-width = (window_ulps * 2^-24 + dim * 2^-53) * |a_j| * max own |t_c|: room for float32 matmul
    rounding (verified later, see :func:`a2t_ranks_from_counts`) plus the float64 estimate's error.
    """
    a = _audio(audio_emb)
    if summary.best.shape[0] != a.shape[0]:
        raise InputError(f"own-score summary covers {summary.best.shape[0]} clips, audio has {a.shape[0]}")
    has = summary.num_captions > 0
    scale = _row_norms(a) * summary.text_norm
    half = (window_ulps * _F32_EPS + a.shape[1] * _F64_EPS) * scale
    with np.errstate(invalid="ignore"):
        lo = np.nextafter((summary.best - half).astype(np.float32), np.float32(-np.inf))
        hi = np.nextafter((summary.best + half).astype(np.float32), np.float32(np.inf))
    lo[~has] = np.nan
    hi[~has] = np.nan
    return A2TWindow(lo, hi, summary.num_captions.copy())


def _row_norms(x: np.ndarray) -> np.ndarray:
    """Row norms accumulated in float64 without a float64 copy of the matrix."""
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))


def _a2t_counts_from_scores(
    scores: np.ndarray, clip_ids: np.ndarray, window: A2TWindow, buf: np.ndarray | None = None
) -> A2TCounts:
    n_rows, n_clips = scores.shape
    lo = window.lo[None, :]
    hi = window.hi[None, :]
    above = _cmp_count(np.greater, scores, hi, 0, buf)
    in_window = _cmp_count(np.greater_equal, scores, lo, 0, buf) - above
    # Own captions' scores come straight from the diagonal-like gather; a clip's best own caption is
    # always in its window, so only columns with other captions in the window need scanning.
    own = scores[np.arange(n_rows), clip_ids]
    own_in = (own >= window.lo[clip_ids]) & (own <= window.hi[clip_ids])
    win_clip, win_score = [clip_ids[own_in]], [own[own_in]]
    cols = np.flatnonzero(in_window - np.bincount(clip_ids[own_in], minlength=n_clips))
    for start in range(0, cols.size, _WINDOW_COLS):  # bounded temporaries even if many columns qualify
        c = cols[start : start + _WINDOW_COLS]
        sub = scores[:, c]
        inside = (sub >= lo[:, c]) & (sub <= hi[:, c]) & (clip_ids[:, None] != c[None, :])
        rows, k = np.nonzero(inside)
        win_clip.append(c[k])
        win_score.append(sub[rows, k])
    own_max = np.full(n_clips, -np.inf, dtype=scores.dtype)
    np.maximum.at(own_max, clip_ids, own)
    return A2TCounts(
        above, own_max, np.concatenate(win_clip).astype(np.int64), np.concatenate(win_score), n_rows
    )


def score_block(
    text_block: Any, audio_emb: Any, clip_ids_of_block: Any, window: A2TWindow, *, row_offset: int = 0
) -> tuple[np.ndarray, A2TCounts]:
    """Pass 2 over a caption partition with one matmul: its t2a ranks and its a2t partial counts."""
    a = _audio(audio_emb)
    if window.n_clips != a.shape[0]:
        raise InputError(f"a2t window covers {window.n_clips} clips, audio has {a.shape[0]}")
    return _score_block(*_block_inputs(text_block, a, clip_ids_of_block, row_offset), a, window)


def _score_block(
    t: np.ndarray, ids: np.ndarray, a: np.ndarray, window: A2TWindow, work: _Workspace | None = None
) -> tuple[np.ndarray, A2TCounts]:
    if work is None:
        scores, mask = t @ a.T, None
    else:
        scores, mask = np.matmul(t, a.T, out=work.scores[: t.shape[0]]), work.mask
    return _t2a_from_scores(scores, ids, mask), _a2t_counts_from_scores(scores, ids, window, mask)


class _Workspace:
    """Score and mask buffers reused across blocks (fresh large arrays per block cost page faults)."""

    def __init__(self, rows: int, n_clips: int):
        self.scores = np.empty((rows, n_clips), dtype=np.float32)
        self.mask = np.empty((rows, n_clips), dtype=bool)


def t2a_ranks_for_block(text_block: Any, audio_emb: Any, clip_ids_of_block: Any) -> np.ndarray:
    """0-based tie-averaged t2a ranks of a caption block against all clips (exact per row)."""
    a = _audio(audio_emb)
    t, ids = _block_inputs(text_block, a, clip_ids_of_block)
    return _t2a_from_scores(t @ a.T, ids)


def a2t_counts_for_block(
    text_block: Any, audio_emb: Any, clip_ids_of_block: Any, window: A2TWindow
) -> A2TCounts:
    """a2t partial counts of a caption block (mergeable with :meth:`A2TCounts.merge`)."""
    return score_block(text_block, audio_emb, clip_ids_of_block, window)[1]


def a2t_ranks_from_counts(counts: A2TCounts, window: A2TWindow) -> tuple[np.ndarray, np.ndarray]:
    """Exact a2t ranks from merged counts: (ranks, clip index of each rank), clips with captions only.

    Raises :class:`AtrError` if the merged counts do not cover every caption exactly once, or if a
    clip's best own score fell outside its window (rerun with a larger ``window_ulps``).
    """
    expected = int(window.num_captions.sum())
    if counts.num_captions != expected:
        raise AtrError(f"a2t counts cover {counts.num_captions} captions, expected {expected}")
    clips = np.flatnonzero(window.num_captions > 0)
    best = counts.own_max[clips]
    outside = np.flatnonzero(~((best >= window.lo[clips]) & (best <= window.hi[clips])))
    if outside.size:
        j = int(clips[outside[0]])
        raise AtrError(
            f"clip {j}: best own-caption score {float(counts.own_max[j])!r} is outside its a2t window "
            f"[{float(window.lo[j])!r}, {float(window.hi[j])!r}] ({outside.size} clips); "
            "rerun with a larger window_ulps"
        )
    n_clips = window.n_clips
    ref = counts.own_max[counts.window_clip]
    greater = counts.above + np.bincount(counts.window_clip[counts.window_score > ref], minlength=n_clips)
    tied = np.bincount(counts.window_clip[counts.window_score == ref], minlength=n_clips)
    return greater[clips] + (tied[clips] - 1) / 2.0, clips.astype(np.int64)


# --------------------------------------------------------------------------- blocked composition


def auto_block_size(n_clips: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Captions per block: about ``CACHE_BLOCK_BYTES`` of float32 similarities but at least
    ``MIN_PREFERRED_ROWS`` rows, never over ``block_bytes`` (a multiple of 64, between 64 and 8192).

    Small blocks are compared while still in cache, which makes the blocked path faster than ranking
    a full matrix (bench/bench_metrics.py); the memory cap wins for very large corpora.
    """
    n = 4 * max(n_clips, 1)
    preferred = max(MIN_PREFERRED_ROWS, CACHE_BLOCK_BYTES // n)
    rows = min(preferred, block_bytes // n, 8192)
    return int(max(64, rows // 64 * 64))


def _n_rows(x: Any) -> int:
    shape = getattr(x, "shape", None)
    return int(shape[0]) if shape is not None else len(x)


def blocked_rank_vectors(
    text_emb: Any,
    audio_emb: Any,
    caption_to_clip: Any,
    block_size: int | None = None,
    *,
    window_ulps: float = DEFAULT_WINDOW_ULPS,
) -> dict[str, np.ndarray]:
    """Same as :func:`rank_vectors` (without per-caption a2t) from embeddings, in caption blocks.

    ``text_emb`` may be any object with ``.shape`` whose row slices ``text_emb[i:j]`` are arrays
    (an ndarray, a memmap, a lazy generator); it is read twice, one block at a time. Memory is
    O(block_size x n_clips) beyond the inputs; ``block_size=None`` picks :func:`auto_block_size`
    (32-256 MB of similarities per block).
    """
    a = _audio(audio_emb)
    block_size = auto_block_size(a.shape[0]) if block_size is None else int(block_size)
    if block_size < 1:
        raise InputError(f"block_size must be >= 1, got {block_size}")
    n_captions = _n_rows(text_emb)
    if n_captions == 0:
        raise InputError("no caption embeddings (0 captions)")
    c2c = _check_caption_to_clip(caption_to_clip, n_captions, a.shape[0])
    bounds = [(i, min(i + block_size, n_captions)) for i in range(0, n_captions, block_size)]

    summary = OwnScoreSummary.merge_all(
        _own_score_summary(*_block_inputs(text_emb[i:j], a, c2c[i:j], i), a) for i, j in bounds
    )
    window = a2t_window(summary, a, window_ulps=window_ulps)
    t2a = np.empty(n_captions, dtype=np.float64)
    work = _Workspace(min(block_size, n_captions), a.shape[0])

    def parts() -> Iterable[A2TCounts]:
        for i, j in bounds:
            t2a[i:j], part = _score_block(*_block_inputs(text_emb[i:j], a, c2c[i:j], i), a, window, work)
            yield part

    a2t, clips = a2t_ranks_from_counts(A2TCounts.merge_all(parts()), window)
    return {"t2a": t2a, "a2t": a2t, "a2t_clips": clips}


def blocked_retrieval_metrics(
    text_emb: Any,
    audio_emb: Any,
    caption_to_clip: Any,
    block_size: int | None = None,
    *,
    window_ulps: float = DEFAULT_WINDOW_ULPS,
) -> dict[str, dict[str, float | int]]:
    """:func:`retrieval_metrics` from embeddings without materialising the similarity matrix."""
    ranks = blocked_rank_vectors(text_emb, audio_emb, caption_to_clip, block_size, window_ulps=window_ulps)
    return metrics_from_ranks(ranks, _n_rows(audio_emb))

