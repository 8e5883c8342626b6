"""Exact segment features for clips of any length and any batch (docs/features.md, "Exactness").

A clip's (T, D) output must equal running that clip alone through the model. Two
things would break that, and this module avoids both:

* zero-padding clips to a common length changes the last 3-4 CNN14 segments, so a
  batch only ever holds clips (or windows) of exactly the same sample length
  (:func:`forward_exact_batch`);
* long clips are cut into windows aligned to the 10240-sample segment grid, with
  ``context_segments`` of context on each inner side that is computed and thrown away.
  The first window starts at sample 0 and the last ends at the clip end, so the clip's
  own edges (reflect padding, conv zero padding, floor pooling) are seen exactly as in a
  whole-clip run. CNN14's receptive field reaches 126 frames (< 4 segments) past a
  segment on each side and a window's reflect padding touches its 2 outer STFT frames:
  4 segments is the minimum, the default 6 a margin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from atr_core.audio.cnn14 import SAMPLE_RATE, SEGMENT_SAMPLES, num_segments
from atr_core.errors import InputError

DEFAULT_MAX_WINDOW_S = 60.0
DEFAULT_MAX_WINDOW_SAMPLES = int(DEFAULT_MAX_WINDOW_S * SAMPLE_RATE)
DEFAULT_CONTEXT_SEGMENTS = 6
#: Audio per forward call (80 s: batch 8 of 10 s clips, ~1.2 GB peak RSS for CNN14 on CPU; batch 16
#: is no faster on CPU and holds ~0.75 GB more).
DEFAULT_MAX_BATCH_SAMPLES = 80 * SAMPLE_RATE


@dataclass(frozen=True)
class Window:
    """Samples ``[start, end)`` of a clip; its local segments ``[keep_from, keep_to)`` are kept.

    They land at clip segments ``[out_offset, out_offset + keep_to - keep_from)``.
    """

    index: int
    start: int
    end: int
    keep_from: int
    keep_to: int
    out_offset: int

    @property
    def length(self) -> int:
        """Window length in samples."""
        return self.end - self.start

    @property
    def n_keep(self) -> int:
        """Number of segments this window contributes."""
        return self.keep_to - self.keep_from


def plan_windows(
    n_samples: int,
    max_window_samples: int = DEFAULT_MAX_WINDOW_SAMPLES,
    context_segments: int = DEFAULT_CONTEXT_SEGMENTS,
) -> list[Window]:
    """Cut a clip of ``n_samples`` into grid-aligned windows of at most ``max_window_samples``.

    One window when the clip fits. Otherwise the first window is ``[0, W)`` and every
    interior window has the same length ``W`` (W = max_window_samples rounded down to
    whole segments), so they batch together; the last window ends at ``n_samples``.
    Every window starts on a multiple of 10240 samples, and every kept segment has at
    least ``context_segments`` segments of computed context on each side that is not a
    clip edge. Together the kept ranges cover segments ``0 .. num_segments(n) - 1`` once.
    """
    if n_samples < 0:
        raise InputError(f"n_samples must be >= 0, got {n_samples}")
    if context_segments < 0:
        raise InputError(f"context_segments must be >= 0, got {context_segments}")
    total = num_segments(n_samples)
    if n_samples <= max_window_samples:
        return [Window(0, 0, n_samples, 0, total, 0)]
    width = max_window_samples // SEGMENT_SAMPLES  # segments per full window
    keep = width - 2 * context_segments
    if keep < 1:
        need = (2 * context_segments + 1) * SEGMENT_SAMPLES
        raise InputError(
            f"max window {max_window_samples} samples ({max_window_samples / SAMPLE_RATE:.2f} s) is too "
            f"small for {context_segments} context segments on each side: it must be >= {need} samples "
            f"({need / SAMPLE_RATE:.2f} s)"
        )
    # The last window starts on the grid as early as the size limit allows.
    last_start = math.ceil((n_samples - max_window_samples) / SEGMENT_SAMPLES)
    windows = [Window(0, 0, width * SEGMENT_SAMPLES, 0, width - context_segments, 0)]
    pos = width - context_segments  # first clip segment not yet covered
    while pos < last_start + context_segments:
        first = pos - context_segments  # window start, in segments (< last_start)
        windows.append(
            Window(
                len(windows),
                first * SEGMENT_SAMPLES,
                (first + width) * SEGMENT_SAMPLES,
                context_segments,
                width - context_segments,
                pos,
            )
        )
        pos += keep
    if pos < total:
        windows.append(
            Window(
                len(windows),
                last_start * SEGMENT_SAMPLES,
                n_samples,
                pos - last_start,
                total - last_start,
                pos,
            )
        )
    return windows


def stitch(n_segments: int, parts: Iterable[tuple[Window, np.ndarray]]) -> np.ndarray:
    """Assemble a clip's (n_segments, D) float32 output from per-window outputs (T_w, D).

    Raises ``ValueError`` unless the kept ranges cover every segment exactly once.
    """
    out: np.ndarray | None = None
    covered = np.zeros(n_segments, dtype=np.int32)
    dim = None
    for win, arr in parts:
        if arr.ndim != 2 or arr.shape[0] < win.keep_to:
            raise ValueError(f"window {win.index}: output {arr.shape} has fewer than {win.keep_to} rows")
        dim = arr.shape[1]
        if out is None:
            out = np.empty((n_segments, dim), dtype=np.float32)
        lo, hi = win.out_offset, win.out_offset + win.n_keep
        if lo < 0 or hi > n_segments:
            raise ValueError(f"window {win.index}: segments [{lo}, {hi}) outside [0, {n_segments})")
        out[lo:hi] = arr[win.keep_from : win.keep_to]
        covered[lo:hi] += 1
    if np.any(covered != 1):
        bad = int(np.flatnonzero(covered != 1)[0])
        raise ValueError(f"segment {bad} covered {covered[bad]} times; windows must cover each segment once")
    if out is None:
        return np.zeros((0, 0 if dim is None else dim), dtype=np.float32)
    return out


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has none)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def output_dim(model: nn.Module) -> int:
    """D of a (B, L) -> (B, T, D) feature model (its ``output_dim``, else measured once)."""
    dim = getattr(model, "output_dim", None)
    if dim is not None:
        return int(dim)
    with torch.inference_mode():
        probe = torch.zeros(1, SEGMENT_SAMPLES, device=model_device(model))
        return int(model(probe).shape[-1])


def forward_exact_batch(
    model: nn.Module,
    waveforms: Sequence[np.ndarray],
    max_batch_samples: int = DEFAULT_MAX_BATCH_SAMPLES,
) -> list[np.ndarray]:
    """Run whole waveforms; batch only equal lengths; return per-clip (T, D) float32 in input order.

    Each sub-batch holds at most ``max_batch_samples`` samples (at least one clip).
    Clips too short for one segment give a (0, D) array without running the model.
    """
    arrays = [np.asarray(w, dtype=np.float32) for w in waveforms]
    for i, a in enumerate(arrays):
        if a.ndim != 1:
            raise InputError(f"waveform {i}: expected a 1-D array, got shape {a.shape}")
    groups: dict[int, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(len(a), []).append(i)
    device = model_device(model)
    results: list[np.ndarray | None] = [None] * len(arrays)
    for length, idxs in groups.items():
        if num_segments(length) == 0:
            empty = np.zeros((0, output_dim(model)), dtype=np.float32)
            for i in idxs:
                results[i] = empty.copy()
            continue
        per_batch = max(1, max_batch_samples // max(length, 1))
        for b in range(0, len(idxs), per_batch):
            chunk = idxs[b : b + per_batch]
            x = torch.from_numpy(np.stack([arrays[i] for i in chunk])).to(device)
            with torch.inference_mode():
                y = model(x).float().cpu().numpy()
            for j, i in enumerate(chunk):
                results[i] = np.ascontiguousarray(y[j])
    return results  # type: ignore[return-value]


def extract_batch(
    model: nn.Module,
    waveforms: Sequence[np.ndarray],
    max_window_samples: int = DEFAULT_MAX_WINDOW_SAMPLES,
    context_segments: int = DEFAULT_CONTEXT_SEGMENTS,
    max_batch_samples: int = DEFAULT_MAX_BATCH_SAMPLES,
) -> list[np.ndarray]:
    """Exact (T, D) features for each waveform: windows of all clips, batched by equal length."""
    plans = [plan_windows(len(w), max_window_samples, context_segments) for w in waveforms]
    pieces = [w[win.start : win.end] for w, plan in zip(waveforms, plans, strict=True) for win in plan]
    outputs = iter(forward_exact_batch(model, pieces, max_batch_samples))
    return [
        stitch(num_segments(len(w)), [(win, next(outputs)) for win in plan])
        for w, plan in zip(waveforms, plans, strict=True)
    ]


def extract_clip(
    model: nn.Module,
    waveform: np.ndarray,
    max_window_samples: int = DEFAULT_MAX_WINDOW_SAMPLES,
    context_segments: int = DEFAULT_CONTEXT_SEGMENTS,
) -> np.ndarray:
    """Exact (T, D) features of one clip of any length, its windows batched."""
    return extract_batch(model, [waveform], max_window_samples, context_segments)[0]


def prepare_for_inference(
    model: nn.Module,
    channels_last: bool = True,
    compile: bool = False,
    allow_tf32: bool = False,
    fold_batchnorm: bool = True,
    matmul_convs: bool | None = None,
) -> nn.Module:
    """Speed knobs that keep outputs exact: eval, no grad, folded BatchNorm, matmul convs, channels-last.

    ``fold_batchnorm`` folds eval-mode BatchNorms into the convs before them when the model
    offers it (:meth:`~atr_core.audio.cnn14.Cnn14Segments.fold_batchnorm_`; about 4e-6 relative
    rounding, well inside the exactness tolerance; 12-22 % faster on CPU in channels_last).
    ``matmul_convs`` (default: on when the model is on CPU) computes the convs oneDNN runs slowly
    as matrix products when the model offers it
    (:meth:`~atr_core.audio.cnn14.Cnn14Segments.use_matmul_convs_`; 1.5-3.5x faster on those layers).
    ``channels_last`` converts 4-D conv weights in place and makes a model with a
    ``channels_last`` attribute feed its conv body in that format. ``compile`` returns
    ``torch.compile(model)`` (compiles per input shape on first use; not picklable: apply it
    after the model reaches the worker).
    On CUDA, TF32 convolutions/matmuls (PyTorch enables TF32 convs by default) are switched
    off process-wide unless ``allow_tf32``: their ~1e-3 relative error would break exactness.
    """
    model.eval()
    model.requires_grad_(False)
    if model_device(model).type == "cuda" and not allow_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if fold_batchnorm and hasattr(model, "fold_batchnorm_"):
        model.fold_batchnorm_()
    if matmul_convs is None:
        matmul_convs = model_device(model).type == "cpu"
    if matmul_convs and hasattr(model, "use_matmul_convs_"):
        model.use_matmul_convs_()
    if channels_last and hasattr(model, "channels_last"):
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    if compile:
        return torch.compile(model)
    return model
