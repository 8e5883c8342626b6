"""Sampled instruments: notes written as a MIDI file (mido) and rendered from a SoundFont (midirenderer).

A SoundFont holds recorded instrument samples; rendering plays them back at the asked pitches, so
the result is a recording of a sampled instrument, not a synthesised tone.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TICKS_PER_BEAT = 480
TEMPO_US = 500_000  # 120 bpm: one beat = 0.5 s, so one tick = 1/960 s
PERCUSSION_CHANNEL = 9


@dataclass(frozen=True)
class Note:
    """One note: start and length in seconds, MIDI pitch, velocity 1-127."""

    start: float
    length: float
    pitch: int
    velocity: int = 90


def midi_bytes(program: int, notes: Sequence[Note]) -> bytes:
    """A one-track Standard MIDI File playing ``notes`` on GM ``program`` (-1: percussion channel)."""
    import mido

    seconds_per_tick = TEMPO_US / 1e6 / TICKS_PER_BEAT
    channel = PERCUSSION_CHANNEL if program < 0 else 0
    events = []
    for n in notes:
        events.append((round(n.start / seconds_per_tick), 1, n.pitch, n.velocity))
        events.append((round((n.start + n.length) / seconds_per_tick), 0, n.pitch, 0))
    events.sort(key=lambda e: (e[0], e[1]))  # note-offs before note-ons at the same tick
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=TEMPO_US, time=0)])
    if program >= 0:
        track.append(mido.Message("program_change", program=program, channel=channel, time=0))
    now = 0
    for tick, on, pitch, velocity in events:
        kind = "note_on" if on else "note_off"
        track.append(mido.Message(kind, note=pitch, velocity=velocity, channel=channel, time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=TICKS_PER_BEAT))
    out = io.BytesIO()
    mido.MidiFile(ticks_per_beat=TICKS_PER_BEAT, tracks=[track]).save(file=out)
    return out.getvalue()


def render(soundfont: bytes, program: int, notes: Sequence[Note]) -> tuple[np.ndarray, int]:
    """Render ``notes`` from ``soundfont`` (SF2 bytes): (mono float32 waveform, sample rate)."""
    import midirenderer
    import soundfile as sf

    wav = midirenderer.render_wave_from(soundfont, midi_bytes(program, notes))
    data, sr = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    return data.mean(axis=1), int(sr)
