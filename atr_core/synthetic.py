"""A small synthetic captioned corpus whose captions are determined by the audio content.

Each clip is a tone (low / middle / high pitch) with a rhythm (steady / pulsing / beeping) over a
background (silence / white noise / rumbling brown noise); its five captions name those three
properties in different words. Used by the demo job and the learning tests: a model that learns
anything must beat chance on it.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PITCH_HZ = {"low": 180.0, "middle": 700.0, "high": 2600.0}
RHYTHMS = ("steady", "pulsing", "beeping")
BACKGROUNDS = ("quiet", "hiss", "rumble")

_PITCH_WORDS = {
    "low": ["low", "deep", "low pitched"],
    "middle": ["medium", "mid", "moderate"],
    "high": ["high", "shrill", "high pitched"],
}
_RHYTHM_WORDS = {
    "steady": ["steady", "continuous", "constant"],
    "pulsing": ["pulsing", "throbbing", "wavering"],
    "beeping": ["beeping", "repeated short", "intermittent"],
}
_BACKGROUND_WORDS = {
    "quiet": ["in silence", "in a quiet room", "with no background"],
    "hiss": ["over white noise", "with a loud hiss", "over static hiss"],
    "rumble": ["over a rumble", "with rumbling in the background", "over a low rumble"],
}
_TEMPLATES = [
    "a {p} {r} tone {b}",
    "{r} {p} sound {b}",
    "someone plays a {p} {r} note {b}",
    "a {r} {p} beep {b}",
    "the {p} tone is {r} {b}",
]


@dataclass(frozen=True)
class SyntheticClip:
    """One generated clip: its content labels, its audio and its captions."""

    audio_id: str
    pitch: str
    rhythm: str
    background: str
    waveform: np.ndarray
    captions: tuple[str, ...]


def synth_waveform(pitch: str, rhythm: str, background: str, seconds: float, sr: int, rng) -> np.ndarray:
    """The audio for one (pitch, rhythm, background) combination, float32 in [-1, 1]."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = PITCH_HZ[pitch] * rng.uniform(0.95, 1.05)
    tone = np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
    if rhythm == "pulsing":
        tone *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t)
    elif rhythm == "beeping":
        tone *= (np.sin(2 * np.pi * rng.uniform(1.5, 2.5) * t) > 0.3).astype(np.float64)
    if background == "hiss":
        noise = 0.3 * rng.standard_normal(n)
    elif background == "rumble":
        noise = np.cumsum(rng.standard_normal(n))
        noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
        noise *= 0.4 / (np.abs(noise).max() + 1e-9)
    else:
        noise = 0.002 * rng.standard_normal(n)
    audio = 0.4 * tone + noise
    return (audio / max(1.0, float(np.abs(audio).max()))).astype(np.float32)


def synth_captions(pitch: str, rhythm: str, background: str, rng) -> tuple[str, ...]:
    """Five captions naming the clip's pitch, rhythm and background in varied words."""
    caps = []
    for template in _TEMPLATES:
        caps.append(
            template.format(
                p=rng.choice(_PITCH_WORDS[pitch]),
                r=rng.choice(_RHYTHM_WORDS[rhythm]),
                b=rng.choice(_BACKGROUND_WORDS[background]),
            )
        )
    return tuple(caps)


def generate(n_clips: int, seconds: float = 2.0, sr: int = 32000, seed: int = 0) -> list[SyntheticClip]:
    """``n_clips`` clips cycling through all 27 content combinations, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(PITCH_HZ, RHYTHMS, BACKGROUNDS))
    clips = []
    for i in range(n_clips):
        pitch, rhythm, background = combos[i % len(combos)]
        clips.append(
            SyntheticClip(
                audio_id=f"clip_{i:04d}.wav",
                pitch=pitch,
                rhythm=rhythm,
                background=background,
                waveform=synth_waveform(pitch, rhythm, background, seconds, sr, rng),
                captions=synth_captions(pitch, rhythm, background, rng),
            )
        )
    return clips


def write_corpus(
    folder: str | Path,
    n_clips: int,
    seconds: float = 2.0,
    sr: int = 32000,
    seed: int = 0,
    val_fraction: float = 0.25,
) -> Path:
    """Write the clips as WAV files plus a JSON Lines manifest (``captions.jsonl``); return its path.

    The first ``1 - val_fraction`` of the clips are split "train", the rest "val".
    """
    import soundfile as sf

    folder = Path(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    clips = generate(n_clips, seconds, sr, seed)
    n_train = int(round(n_clips * (1 - val_fraction)))
    manifest = folder / "captions.jsonl"
    with manifest.open("w", encoding="utf-8") as f:
        for i, clip in enumerate(clips):
            sf.write(folder / "audio" / clip.audio_id, clip.waveform, sr, subtype="PCM_16")
            split = "train" if i < n_train else "val"
            row = {"audio": clip.audio_id, "captions": list(clip.captions), "split": split}
            f.write(json.dumps(row) + "\n")
    return manifest
