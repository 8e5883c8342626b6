"""atr_core.audio.lms: log-mel segment features against a direct librosa computation."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from atr_core.audio.cnn14 import num_segments
from atr_core.audio.lms import LogMelSegments


@pytest.fixture(scope="module")
def lms(lms_model):
    return lms_model


def run(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None])[0].numpy()


def librosa_segments(x: np.ndarray) -> np.ndarray:
    """The definition, computed independently in float64: power mel, dB, per-32-frame mean."""
    power = librosa.feature.melspectrogram(
        y=x.astype(np.float64),
        sr=32000,
        n_fft=1024,
        hop_length=320,
        win_length=1024,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=64,
        fmin=50,
        fmax=14000,
        htk=False,
        norm="slaney",
    )
    db = 10.0 * np.log10(np.maximum(power, 1e-10)).T  # (frames, 64), no top_db
    assert db.shape[0] == 1 + len(x) // 320
    t = db.shape[0] // 32
    return db[: t * 32].reshape(t, 32, 64).mean(axis=1)


def test_values_and_length_match_librosa(lms):
    rng = np.random.default_rng(0)
    lengths = [9920, 10239, 10240, 20159, 20160, 32000 * 3 + 123, *rng.integers(9920, 5 * 32000, 6)]
    for n in lengths:
        t = np.arange(n) / 32000
        x = (0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * rng.uniform(60, 9000) * t)).astype(
            np.float32
        )
        got, want = run(lms, x), librosa_segments(x)
        assert got.shape == want.shape == (num_segments(n), 64)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


def test_no_top_db_clipping_and_silence_floor(lms):
    x = np.zeros(3 * 32000, np.float32)
    x[:32000] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(32000) / 32000)
    out = run(lms, x)
    assert out.max() > 0
    np.testing.assert_allclose(out[-3:], -100.0, atol=1e-5)  # 10*log10(1e-10): nothing clipped at max-80 dB


def test_batch_rows_are_independent(lms):
    rng = np.random.default_rng(1)
    xs = (0.1 * rng.standard_normal((3, 50000))).astype(np.float32)
    xs[1] *= 1e-3  # a quiet clip next to loud ones: per-clip values must not move
    with torch.inference_mode():
        batch = lms(torch.from_numpy(xs)).numpy()
    for i in range(3):
        np.testing.assert_allclose(batch[i], run(lms, xs[i]), rtol=0, atol=1e-4)


def test_no_weights_to_load(lms):
    assert LogMelSegments.output_dim == 64
    assert not any(p.requires_grad for p in lms.parameters())
    assert not lms.training
