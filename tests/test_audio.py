"""atr_core.audio.decode: decoding, downmix + resampling, failure reasons, silence and padding policy."""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr

from atr_core.audio.cnn14 import num_segments
from atr_core.audio.decode import (
    MIN_SAMPLES,
    SILENCE_PEAK,
    TARGET_SR,
    DecodedAudio,
    decode_audio,
    is_silent,
    pad_to_minimum,
)
from atr_core.errors import DecodeError
from tests.audio_fixtures import signal, strip_mp3_length_tag, write_audio


def expected_decode(path_or_bytes, sr: int) -> np.ndarray:
    """Independent computation: whole-file read, mean downmix, one-shot soxr HQ."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    frames, file_sr = sf.read(src, dtype="float32", always_2d=True)
    assert file_sr == sr
    mono = frames.mean(axis=1, dtype=np.float32)
    return mono if sr == TARGET_SR else soxr.resample(mono, sr, TARGET_SR, quality="HQ")


def encode(data: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize(
    "ext, subtype, sr, channels",
    [
        (".wav", "PCM_U8", 44100, 2),
        (".wav", "PCM_16", 44100, 2),
        (".wav", "PCM_24", 48000, 1),
        (".wav", "PCM_32", 22050, 3),
        (".wav", "FLOAT", 44100, 2),
        (".wav", "DOUBLE", 96000, 8),
        (".wav", "PCM_16", 32000, 1),
        (".wav", "PCM_16", 8000, 2),
        (".flac", None, 48000, 2),
        (".flac", "PCM_24", 11025, 1),
        (".ogg", None, 44100, 2),
        (".mp3", None, 44100, 2),
        (".mp3", None, 16000, 1),
    ],
)
def test_decode_matches_direct_computation(tmp_path, ext, subtype, sr, channels):
    path = write_audio(tmp_path / f"clip{ext}", 1.7, sr=sr, channels=channels, subtype=subtype, kind="noise")
    got = decode_audio(path, name="clip")
    want = expected_decode(path, sr)
    assert isinstance(got, DecodedAudio)
    assert got.waveform.dtype == np.float32 and got.waveform.ndim == 1
    assert got.waveform.flags.c_contiguous
    assert (got.source_sample_rate, got.source_channels) == (sr, channels)
    assert got.waveform.shape == want.shape
    np.testing.assert_allclose(got.waveform, want, rtol=0, atol=1e-6)
    assert got.duration_s == pytest.approx(len(want) / TARGET_SR)
    if ext != ".mp3":  # MP3 adds no samples when gapless info is present either
        assert got.duration_s == pytest.approx(1.7, abs=1.0 / sr + 1.0 / TARGET_SR)


@pytest.mark.parametrize("subtype, atol", [("PCM_16", 1e-4), ("PCM_24", 1e-6), ("FLOAT", 1e-6)])
def test_lossless_decode_equals_resampled_source_signal(tmp_path, subtype, atol):
    sr, channels = 44100, 2
    original = signal(1.3, sr, channels, kind="tone", freq=660.0)
    path = tmp_path / "x.wav"
    sf.write(path, original, sr, subtype=subtype)
    want = soxr.resample(original.mean(axis=1, dtype=np.float32), sr, TARGET_SR, quality="HQ")
    np.testing.assert_allclose(decode_audio(path).waveform, want, rtol=0, atol=atol)


def test_downmix_is_the_channel_mean(tmp_path):
    x = signal(1.0, 32000, 1, kind="noise")[:, 0]
    path = tmp_path / "opposite.wav"
    sf.write(path, np.stack([x, -x, 2 * x], axis=1), 32000, subtype="FLOAT")
    np.testing.assert_allclose(decode_audio(path).waveform, 2 * x / 3, rtol=0, atol=1e-7)


def test_every_source_kind_gives_the_same_waveform(tmp_path):
    path = write_audio(tmp_path / "a.flac", 1.2, sr=44100, channels=2, kind="noise")
    data = path.read_bytes()

    class Stream(io.RawIOBase):  # a non-seekable reader (e.g. a network stream)
        def __init__(self, payload: bytes):
            self._buf = io.BytesIO(payload)

        def readable(self):
            return True

        def readinto(self, b):
            return self._buf.readinto(b)

    offset = io.BytesIO(b"junk" + data)
    offset.seek(4)
    with open(path, "rb") as handle:
        results = [
            decode_audio(path),
            decode_audio(str(path)),
            decode_audio(data),
            decode_audio(bytearray(data)),
            decode_audio(io.BytesIO(data)),
            decode_audio(Stream(data)),
            decode_audio(offset),
            decode_audio(handle),
        ]
    for r in results[1:]:
        np.testing.assert_array_equal(r.waveform, results[0].waveform)


def test_block_reading_bounds_memory(tmp_path):
    # 10 s, 8 channels, 96 kHz: reading it whole as float32 would take 30.7 MB.
    path = write_audio(tmp_path / "big.wav", 10.0, sr=96000, channels=8, kind="noise")
    whole = 10 * 96000 * 8 * 4
    tracemalloc.start()
    try:
        out = decode_audio(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(out.waveform) == 10 * TARGET_SR
    assert peak < whole / 3, f"peak {peak / 1e6:.1f} MB"


# ----------------------------------------------------------------------------- failures


def reason_of(source, name="clip-7") -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_audio(source, name=name)
    assert name in str(info.value)
    return info.value


def test_missing_and_empty(tmp_path):
    assert reason_of(tmp_path / "nope.wav").reason == "missing_file"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert reason_of(empty).reason == "empty_file"
    assert reason_of(b"").reason == "empty_file"
    assert reason_of(io.BytesIO()).reason == "empty_file"


RANDOM_BYTES = bytes(np.random.default_rng(3).integers(0, 256, 4000, np.uint8))


@pytest.mark.parametrize("payload", [b"this is a text file, not audio\n" * 20, RANDOM_BYTES])
def test_unreadable(tmp_path, payload):
    path = tmp_path / "fake.wav"
    path.write_bytes(payload)
    assert reason_of(path).reason == "unreadable"
    assert reason_of(payload).reason == "unreadable"


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_no_samples(tmp_path, subtype):
    data = encode(np.zeros((0, 2), np.float32), 44100, "WAV", subtype)
    assert len(data) > 0
    assert reason_of(data).reason == "no_samples"
    path = tmp_path / "zero.wav"
    path.write_bytes(data)
    assert reason_of(path).reason == "no_samples"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_non_finite(bad, subtype):
    x = signal(4.0, 22050, 2, kind="noise")
    x[70001, 1] = bad  # in the second 65536-frame block
    err = reason_of(encode(x, 22050, "WAV", subtype))
    assert err.reason == "non_finite"
    assert "frame 70001" in str(err)


TRUNCATIONS = [(f, c) for f in ("FLAC", "MP3", "MP3-noxing", "WAV") for c in (0.35, 0.7, 0.95, 0.995)]
# A cut inside an Ogg stream's final page only leaves "junk after the last page": not detected.
TRUNCATIONS += [("OGG", 0.35), ("OGG", 0.7)]


@pytest.mark.parametrize("fmt, frac", TRUNCATIONS)
def test_truncated(fmt, frac):
    data = encode(signal(3.0, 44100, 2, kind="noise"), 44100, fmt.split("-")[0])
    if fmt == "MP3-noxing":
        data = strip_mp3_length_tag(data)
    assert reason_of(data[: int(len(data) * frac)]).reason == "truncated"


@pytest.mark.parametrize("fmt", ["FLAC", "MP3", "MP3-noxing", "WAV", "OGG"])
def test_random_cuts_fail_cleanly(fmt):
    """Whatever the cut point, decoding returns audio or raises DecodeError: never another error."""
    data = encode(signal(1.0, 44100, 1, kind="noise"), 44100, fmt.split("-")[0])
    if fmt == "MP3-noxing":
        data = strip_mp3_length_tag(data)
    rng = np.random.default_rng(11)
    reasons = set()
    for cut in rng.integers(1, len(data), 30):
        try:
            decode_audio(data[:cut], name="cut")
            reasons.add("ok")
        except DecodeError as exc:
            reasons.add(exc.reason)
    assert reasons <= {"ok", "truncated", "unreadable", "no_samples"}
    assert "truncated" in reasons


def test_mp3_without_length_header_decodes_to_its_end():
    """libsndfile guesses a VBR MP3's length from its first frame without a Xing header; we read it all."""
    sr, seconds = 44100, 5.0
    data = strip_mp3_length_tag(encode(signal(seconds, sr, 1, kind="noise"), sr, "MP3"))
    guessed = sf.SoundFile(io.BytesIO(data)).frames
    got = decode_audio(data, name="vbr").waveform
    want = int(seconds * TARGET_SR)
    assert guessed < 0.8 * seconds * sr  # the trap this guards against
    assert want <= len(got) <= want + 2 * 1152 * TARGET_SR // sr + 2


def test_mp3_with_tags_and_streaming_wav_header_are_not_truncated():
    x = signal(1.0, 44100, 2, kind="noise")
    mp3 = encode(x, 44100, "MP3")
    id3v2 = b"ID3\x03\x00\x00\x00\x00\x00\x20" + bytes(32)
    id3v1 = b"TAG" + bytes(125)
    assert len(decode_audio(id3v2 + mp3 + id3v1).waveform) == TARGET_SR
    wav = bytearray(encode(x, 44100, "WAV"))
    at = wav.index(b"data")
    wav[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFFF)  # length unknown, as streaming writers do
    assert len(decode_audio(bytes(wav)).waveform) == TARGET_SR


# ----------------------------------------------------------------------------- silence, padding


def test_silent_clip_is_valid_audio(tmp_path):
    silent = decode_audio(write_audio(tmp_path / "s.flac", 1.0, kind="silence"))
    assert len(silent.waveform) == TARGET_SR and is_silent(silent.waveform)
    assert not is_silent(decode_audio(write_audio(tmp_path / "t.flac", 1.0, kind="tone")).waveform)


def test_is_silent_threshold_property():
    rng = np.random.default_rng(5)
    assert is_silent(np.zeros(0, np.float32))
    for _ in range(200):
        x = (rng.standard_normal(rng.integers(1, 500)) * 10.0 ** rng.uniform(-8, 0)).astype(np.float32)
        assert is_silent(x) == (np.abs(x).max() <= SILENCE_PEAK)


def test_min_samples_is_the_first_length_with_a_segment():
    assert num_segments(MIN_SAMPLES) == 1
    assert num_segments(MIN_SAMPLES - 1) == 0


def test_pad_to_minimum_property():
    rng = np.random.default_rng(9)
    for n in [1, MIN_SAMPLES - 1, MIN_SAMPLES, MIN_SAMPLES + 1, *rng.integers(1, 30000, 100)]:
        x = rng.standard_normal(n).astype(np.float32)
        out, padded = pad_to_minimum(x)
        assert padded == (n < MIN_SAMPLES)
        assert len(out) == max(n, MIN_SAMPLES) and out.dtype == np.float32
        np.testing.assert_array_equal(out[:n], x)
        assert not out[n:].any()
        assert num_segments(len(out)) >= 1
        if padded:
            assert num_segments(len(out)) == 1
    with pytest.raises(DecodeError) as info:
        pad_to_minimum(np.zeros(0, np.float32))
    assert info.value.reason == "no_samples"
