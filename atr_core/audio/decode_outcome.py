"""One manifest entry -> a decoded clip or a failure record, never an exception.

This is how the extraction job decodes its inputs and classifies what goes wrong: ``missing_file``
or ``read_error`` when the file cannot be opened, a :class:`~atr_core.errors.DecodeError` reason
(``empty_file``, ``unreadable``, ...) or ``internal_error`` while decoding. How files are opened is
pluggable: the job opens them through Beam FileSystems, the default here is fsspec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, NamedTuple

import fsspec
import numpy as np

from atr_core.audio.decode import decode_audio, is_silent, pad_to_minimum
from atr_core.errors import DecodeError
from atr_core.formats.failures import failure_record
from atr_core.formats.manifest import ClipEntry
from atr_core.runtime.storage import open_uri


class ClipInfo(NamedTuple):
    """What travels with every window of a clip up to its shard row (``n_windows`` is 0 until windowed)."""

    audio_id: str
    uri: str
    split: str | None
    duration_s: float
    source_sample_rate: int
    source_channels: int
    n_samples: int
    n_windows: int


@dataclass(frozen=True)
class DecodeOutcome:
    """What decoding one manifest entry gave: ``(ClipInfo, waveform)`` or a failure record, and stats."""

    clip: tuple[ClipInfo, np.ndarray] | None = None
    failure: dict[str, str] | None = None
    file_read: bool = False
    padded: bool = False
    silent: bool = False
    audio_ms: int = 0


def uri_exists(uri: str) -> bool:
    """Whether ``uri`` (a local path or URL) exists, asked through fsspec."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def is_missing(uri: str, exc: BaseException, exists: Callable[[str], bool] = uri_exists) -> bool:
    """Whether opening ``uri`` failed with ``exc`` because the file is not there.

    A failing existence probe means "not known to be missing" (a ``read_error``, not a ``missing_file``).
    """
    if isinstance(exc, FileNotFoundError):
        return True
    try:
        return not exists(uri)
    except Exception:  # noqa: BLE001 - the existence probe itself failed: not "missing"
        return False


def decode_entry(
    entry: ClipEntry,
    open_file: Callable[[str], IO[bytes]] = open_uri,
    exists: Callable[[str], bool] = uri_exists,
) -> DecodeOutcome:
    """Open a clip with ``open_file`` and decode it to 32 kHz mono float32, padded to the model minimum.

    Thread-safe (given a thread-safe ``open_file``) and never raises: any problem becomes a failure
    record (``missing_file``, ``read_error``, a DecodeError reason or ``internal_error``).
    """
    try:
        handle = open_file(entry.uri)
    except Exception as exc:  # noqa: BLE001 - any open problem becomes a failure record
        if is_missing(entry.uri, exc, exists):
            msg = f"{entry.uri}: no such file"
            rec = failure_record(entry.audio_id, entry.uri, "read", "missing_file", msg)
        else:
            msg = f"{entry.uri}: {type(exc).__name__}: {exc}"
            rec = failure_record(entry.audio_id, entry.uri, "read", "read_error", msg)
        return DecodeOutcome(failure=rec)
    try:
        with handle:
            decoded = decode_audio(handle, name=entry.uri)
        wave, padded = pad_to_minimum(decoded.waveform)
    except DecodeError as exc:
        rec = failure_record(entry.audio_id, entry.uri, "decode", exc.reason, str(exc))
        return DecodeOutcome(failure=rec, file_read=True)
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the other clips
        msg = f"{entry.uri}: {type(exc).__name__}: {exc}"
        rec = failure_record(entry.audio_id, entry.uri, "decode", "internal_error", msg)
        return DecodeOutcome(failure=rec, file_read=True)
    info = ClipInfo(
        audio_id=entry.audio_id,
        uri=entry.uri,
        split=entry.split,
        duration_s=float(decoded.duration_s),
        source_sample_rate=int(decoded.source_sample_rate),
        source_channels=int(decoded.source_channels),
        n_samples=len(wave),
        n_windows=0,
    )
    return DecodeOutcome(
        clip=(info, wave),
        file_read=True,
        padded=padded,
        silent=is_silent(decoded.waveform),
        audio_ms=int(round(decoded.duration_s * 1000)),
    )
