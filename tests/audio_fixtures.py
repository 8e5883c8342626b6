"""Synthetic audio for tests: signals and files written with soundfile (no network, no data sets).

Shared by several test modules: keep the names and signatures stable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
DEFAULT_SUBTYPES = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}
KINDS = ("tone", "noise", "silence")


def tone(seconds: float, sr: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine of ``freq`` Hz, shape (round(seconds * sr),)."""
    t = np.arange(round(seconds * sr), dtype=np.float64) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, sr: int, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    """Seeded Gaussian noise, float32, clipped to [-1, 1], shape (round(seconds * sr),)."""
    rng = np.random.default_rng(seed)
    x = amplitude * rng.standard_normal(round(seconds * sr))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def signal(
    seconds: float, sr: int, channels: int = 1, kind: str = "tone", freq: float = 440.0, seed: int = 0
) -> np.ndarray:
    """Frames (n, channels) float32: tone channel c is at ``freq * (1 + c / 4)``; noise is per-channel."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cols = []
    for c in range(channels):
        if kind == "tone":
            cols.append(tone(seconds, sr, freq * (1 + c / 4)))
        elif kind == "noise":
            cols.append(noise(seconds, sr, seed=seed * 1000 + c))
        else:
            cols.append(np.zeros(round(seconds * sr), dtype=np.float32))
    return np.stack(cols, axis=1)


def write_audio(
    path: str | Path,
    seconds: float,
    sr: int = 44100,
    channels: int = 1,
    subtype: str | None = None,
    fmt: str | None = None,
    kind: str = "tone",
    freq: float = 440.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic clip (see :func:`signal`) with soundfile; the format follows the extension."""
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown audio extension; give fmt=")
    data = signal(seconds, sr, channels, kind, freq, seed)
    sf.write(path, data, sr, format=fmt, subtype=subtype or DEFAULT_SUBTYPES.get(fmt))
    return path


def strip_mp3_length_tag(data: bytes) -> bytes:
    """Remove the first MPEG frame when it is a Xing/Info header frame (LAME writes one).

    libsndfile then has to estimate the stream length from the first audio frame.
    """
    start = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] & 0xE0 == 0xE0)
    if not any(data[start + k : start + k + 4] in (b"Xing", b"Info") for k in (13, 21, 36)):
        raise ValueError("no Xing/Info frame to strip")
    nxt = start + 4
    while not (data[nxt] == 0xFF and data[nxt + 1] == data[start + 1]):
        nxt += 1
    return data[:start] + data[nxt:]


def sweep_clip(seconds_or_samples: float | int, seed: int, sr: int = 32000) -> np.ndarray:
    """Noise plus a rising tone at ``sr`` (float seconds or int samples): every segment differs."""
    if isinstance(seconds_or_samples, float):
        n = int(seconds_or_samples * sr)
    else:
        n = int(seconds_or_samples)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    sweep = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)
    return (0.05 * rng.standard_normal(n) + sweep).astype(np.float32)


def assert_exact(got: np.ndarray, want: np.ndarray) -> None:
    """The project's exactness criterion: same shape, float32, max abs diff <= 1e-4 of max |want|."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.float32
    scale = float(np.abs(want).max())
    assert scale > 0
    diff = float(np.abs(got - want).max())
    assert diff <= 1e-4 * scale, f"max abs diff {diff:.3g} > 1e-4 * {scale:.3g}"
