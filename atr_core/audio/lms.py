"""Log-mel segment features (LMS), the paper's Table 1 baseline.

The same 64-bin log-mel front end as CNN14 (torchlibrosa ``Spectrogram`` +
``LogmelFilterBank``: 32 kHz, n_fft = window = 1024, hop 320, Hann, centred with reflect
padding, power 2, Slaney mel 50-14000 Hz, 10*log10(max(mel, 1e-10)), no top_db clipping),
without CNN14's bn0 and without weights to load, averaged over each 32-frame (0.32 s)
segment. A trailing partial segment is dropped, so T = num_segments(L) as for CNN14.
"""

from __future__ import annotations

import torch
from torch import nn
from torchlibrosa.stft import LogmelFilterBank, Spectrogram

from atr_core.audio.cnn14 import FMAX, FMIN, HOP, MEL_BINS, SAMPLE_RATE, SEGMENT_FRAMES, WINDOW_SIZE


class LogMelSegments(nn.Module):
    """(B, L) waveform at 32 kHz -> (B, T, 64) mean log-mel (dB) per 0.32 s segment."""

    output_dim = MEL_BINS

    def __init__(self) -> None:
        super().__init__()
        self.spectrogram_extractor = Spectrogram(
            n_fft=WINDOW_SIZE,
            hop_length=HOP,
            win_length=WINDOW_SIZE,
            window="hann",
            center=True,
            pad_mode="reflect",
            freeze_parameters=True,
        )
        self.logmel_extractor = LogmelFilterBank(
            sr=SAMPLE_RATE,
            n_fft=WINDOW_SIZE,
            n_mels=MEL_BINS,
            fmin=FMIN,
            fmax=FMAX,
            ref=1.0,
            amin=1e-10,
            top_db=None,
            freeze_parameters=True,
        )
        self.eval()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))[:, 0]  # (B, frames, 64)
        batch, frames, mels = x.shape
        t = frames // SEGMENT_FRAMES
        return x[:, : t * SEGMENT_FRAMES].reshape(batch, t, SEGMENT_FRAMES, mels).mean(dim=2)
