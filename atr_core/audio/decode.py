"""Audio decoding: any soundfile-readable file -> mono float32 waveform at 32 kHz.

WAV (8/16/24/32-bit int, 32/64-bit float), FLAC, OGG/Vorbis and MP3 at any sample rate
and channel count are read with soundfile (libsndfile) in blocks, each block is
downmixed (mean over channels) and streamed through a soxr 'HQ' resampler, so memory
holds only the 32 kHz mono output plus one block, whatever the source size.

Failures raise :class:`atr_core.errors.DecodeError` with one of the reasons
``missing_file``, ``empty_file``, ``unreadable``, ``truncated``, ``no_samples`` or
``non_finite``; the message names the clip. See docs/features.md for what libsndfile
does with truncated files and how each case is detected.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from atr_core.errors import DecodeError

TARGET_SR = 32000
#: CNN14 needs 1 + n // 320 >= 32 STFT frames for one 0.32 s segment.
MIN_SAMPLES = 9920
#: Frames read per block (per channel).
BLOCK_FRAMES = 1 << 16
RESAMPLE_QUALITY = "HQ"
#: Peak amplitude at or below which a clip counts as silent (one 16-bit quantisation step).
SILENCE_PEAK = 2.0**-15
#: libsndfile's frame count for streams of unknown length.
_UNKNOWN_FRAMES = 2**63 - 1
_MP3_LENGTH_TAGS = (b"Xing", b"Info", b"VBRI")
#: "data : 176400 (should be 117585)" in libsndfile's WAV/AIFF parse log.
_DATA_SIZE_RE = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
#: Data sizes that streaming writers put in headers when the length is unknown (not truncation).
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 1}


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded clip: ``waveform`` is float32, mono, 32 kHz, shape (n,)."""

    waveform: np.ndarray
    source_sample_rate: int
    source_channels: int
    source_format: str = ""

    @property
    def duration_s(self) -> float:
        """Duration of the decoded (32 kHz) waveform in seconds."""
        return len(self.waveform) / TARGET_SR


Source = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


def decode_audio(source: Source, name: str = "") -> DecodedAudio:
    """Decode ``source`` (bytes, a local path or a binary file object) to 32 kHz mono float32.

    ``name`` (an audio_id or path) is used in error messages. Raises :class:`DecodeError`.
    """
    label = name or _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise DecodeError("missing_file", f"{label}: cannot open {path}: {exc.strerror}") from exc
        if size == 0:
            raise DecodeError("empty_file", f"{label}: empty file (0 bytes)")
        return _decode_seekable(path, lambda: open(path, "rb"), label)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif getattr(source, "seekable", lambda: False)():
        return _decode_fileobj(source, label)
    else:
        data = source.read()
    if not data:
        raise DecodeError("empty_file", f"{label}: empty file (0 bytes)")
    return _decode_seekable(io.BytesIO(data), lambda: io.BytesIO(data), label)


def is_silent(waveform: np.ndarray, peak: float = SILENCE_PEAK) -> bool:
    """True if no sample's magnitude exceeds ``peak`` (an empty waveform is silent)."""
    return waveform.size == 0 or float(np.max(np.abs(waveform))) <= peak


def pad_to_minimum(waveform: np.ndarray) -> tuple[np.ndarray, bool]:
    """Zero-pad at the end to :data:`MIN_SAMPLES` (exactly one CNN14 segment); say whether it padded.

    An empty waveform is a failure (``DecodeError('no_samples')``), never padded.
    """
    n = len(waveform)
    if n == 0:
        raise DecodeError("no_samples", "cannot pad an empty waveform (0 samples)")
    if n >= MIN_SAMPLES:
        return waveform, False
    out = np.zeros(MIN_SAMPLES, dtype=np.float32)
    out[:n] = waveform
    return out, True


# --------------------------------------------------------------------------- internals


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


def _decode_fileobj(fileobj: BinaryIO, label: str) -> DecodedAudio:
    start = fileobj.tell()
    end = fileobj.seek(0, io.SEEK_END)
    fileobj.seek(start)
    if end - start <= 0:
        raise DecodeError("empty_file", f"{label}: empty file (0 bytes)")
    if start:  # soundfile expects the audio file to start at offset 0 of the object
        fileobj = io.BytesIO(fileobj.read())
    return _decode_seekable(fileobj, lambda: _rewound(fileobj), label)


def _open(target: object, label: str, closefd: bool = True) -> sf.SoundFile:
    try:
        return sf.SoundFile(target, closefd=closefd)
    except (RuntimeError, sf.SoundFileError, TypeError, ValueError) as exc:
        raise DecodeError("unreadable", f"{label}: not a readable audio file ({_clean(exc)})") from exc


def _decode_seekable(target: object, reopen, label: str) -> DecodedAudio:
    """Decode ``target`` through libsndfile's seekable path.

    ``reopen()`` gives a binary handle on the file at its first byte (a context manager
    that leaves ``target``'s position alone). It is used only for MP3: to look for a
    Xing/Info/VBRI length header and, without one, to decode the bytes as a stream
    (:func:`_decode_stream`).
    """
    with _open(target, label) as f:
        _check_header_log(f, label)
        if f.format != "MP3":
            return _read_all(f, label, expected=f.frames)
        with reopen() as fh:
            exact_length = _find_length_tag(_mp3_head(fh))
        if exact_length:
            return _read_all(f, label, expected=f.frames)
    with reopen() as fh:
        data = fh.read()
    return _decode_stream(data, label)


def _check_header_log(f: sf.SoundFile, label: str) -> None:
    """Raise ``truncated`` when libsndfile's parse log shows data missing from the end.

    libsndfile silently shortens a WAV/AIFF whose data chunk runs past the end of the
    file (it logs ``data : <declared> (should be <present>)``) and an Ogg stream that
    stops without its end-of-stream page (``Last page lacks an end-of-stream bit`` or
    ``File ended unexpectedly``).
    """
    log = f.extra_info
    for declared, present in _DATA_SIZE_RE.findall(log):
        declared, present = int(declared), int(present)
        if declared not in _PLACEHOLDER_SIZES and present < declared - 8:
            raise DecodeError(
                "truncated", f"{label}: truncated: data chunk of {declared} bytes, {present} present"
            )
    if "File ended unexpectedly" in log or "lacks an end-of-stream" in log:
        raise DecodeError("truncated", f"{label}: truncated: the stream ends without its end-of-stream page")


@contextlib.contextmanager
def _rewound(fh: BinaryIO) -> Iterator[BinaryIO]:
    """``fh`` at offset 0 for the duration of the block, then back where libsndfile left it."""
    pos = fh.tell()
    fh.seek(0)
    try:
        yield fh
    finally:
        fh.seek(pos)


def _mp3_head(fh: BinaryIO) -> bytes:
    """The bytes after any ID3v2 tag: where the first MPEG frame (and its Xing header) is."""
    head = fh.read(10)
    skip = 0
    if len(head) == 10 and head[:3] == b"ID3":
        size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
        skip = 10 + size + (10 if head[5] & 0x10 else 0)
    fh.seek(skip)
    return fh.read(8192)


def _find_length_tag(head: bytes) -> bool:
    """True if the first MPEG frame in ``head`` carries a Xing/Info/VBRI header."""
    for i in range(len(head) - 4):
        if head[i] == 0xFF and head[i + 1] & 0xE0 == 0xE0:
            return any(head[i + k : i + k + 4] in _MP3_LENGTH_TAGS for k in (13, 21, 36))
    return False


def _decode_stream(data: bytes, label: str) -> DecodedAudio:
    """Decode ``data`` from a pipe: libsndfile then reads to the real end instead of a length guess.

    Used for MP3 files without a Xing/Info/VBRI header, whose length libsndfile would
    otherwise estimate from the first frame's bitrate (and stop there for VBR files).
    """
    rfd, wfd = os.pipe()

    def feed() -> None:
        try:
            with os.fdopen(wfd, "wb") as w:
                w.write(data)
        except (BrokenPipeError, OSError):
            pass

    writer = threading.Thread(target=feed, name="atr-audio-pipe", daemon=True)
    writer.start()
    try:
        with _open(rfd, label, closefd=False) as f:
            return _read_all(f, label, expected=None)
    finally:
        os.close(rfd)  # a writer still blocked on a full pipe gets EPIPE and ends
        writer.join(timeout=30)


def _read_all(f: sf.SoundFile, label: str, expected: int | None) -> DecodedAudio:
    """Block-read ``f``: check finiteness, downmix, stream-resample; short of ``expected`` = truncated."""
    sr, channels = f.samplerate, f.channels
    if expected is not None and expected >= _UNKNOWN_FRAMES:
        expected = None
    # Mean over channels as a matrix-vector product: BLAS does it ~40x faster than ndarray.mean(axis=1).
    downmix = np.full(channels, 1.0 / channels, dtype=np.float32)
    resampler = None
    if sr != TARGET_SR:
        resampler = soxr.ResampleStream(sr, TARGET_SR, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    parts: list[np.ndarray] = []
    total = 0
    while True:
        try:
            block = f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        except (RuntimeError, sf.SoundFileError) as exc:
            of = f" of {expected}" if expected is not None else ""
            raise DecodeError(
                "truncated", f"{label}: decoding failed after {total}{of} frames ({_clean(exc)})"
            ) from exc
        if len(block) == 0:
            break
        if not np.isfinite(block).all():
            bad = int(np.argmin(np.isfinite(block).all(axis=1)))
            raise DecodeError("non_finite", f"{label}: NaN or infinite sample at frame {total + bad}")
        # each read returns a new array, so a column view of it is safe to keep
        mono = block[:, 0] if channels == 1 else block @ downmix
        total += len(mono)
        parts.append(resampler.resample_chunk(mono) if resampler is not None else mono)
    if expected is not None and total < expected:
        raise DecodeError(
            "truncated", f"{label}: truncated: decoded {total} of the {expected} frames its header announces"
        )
    if total == 0:
        raise DecodeError("no_samples", f"{label}: the file holds no audio samples")
    if resampler is not None:
        parts.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    waveform = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(waveform) == 0:
        raise DecodeError("no_samples", f"{label}: {total} source frames resample to 0 samples")
    return DecodedAudio(np.ascontiguousarray(waveform, dtype=np.float32), sr, channels, f.format)


def _clean(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
