"""Typed exceptions raised by atr_core.

Every message names the offending file, row or audio_id. Entry points catch
:class:`AtrError` and turn it into one clear line and a non-zero exit code;
Beam DoFns turn per-item errors into failure (dead-letter) records.
"""

from __future__ import annotations


class AtrError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(AtrError):
    """A user-supplied file or value is unusable (bad format, missing column, ...)."""


class DecodeError(InputError):
    """An audio file could not be turned into a usable waveform.

    ``reason`` is a short machine-readable code (``empty_file``, ``unreadable``,
    ``no_samples``, ``non_finite``, ``silent``, ``too_short``, ``missing_file``, ...)
    used as the failure-record ``error_type`` and the metrics counter name.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class CaptionsFormatError(InputError):
    """A captions/manifest file is malformed (encoding, header, row)."""


class CheckpointError(AtrError):
    """A model checkpoint is missing, unreadable or of the wrong layout."""


class SchemaError(AtrError):
    """A file written by this project has an unknown schema version or shape."""


class WordVectorsError(AtrError):
    """A word-vectors file is missing or is not word2vec data."""


class ConfigMismatchError(AtrError):
    """Two artefacts that must agree (model config, shards, word vectors) do not."""


class OutputExistsError(AtrError):
    """An output location already holds another run."""


class QueryError(InputError):
    """A search query is empty or cannot be embedded."""


class AnnUnavailableError(AtrError):
    """The optional ANN dependency (faiss) is not installed."""
