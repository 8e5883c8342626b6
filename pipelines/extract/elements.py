"""What the extraction job's transforms pass between them, its metrics namespace and dead-letter tag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from atr_core.audio.decode_outcome import ClipInfo
from atr_core.audio.windows import Window
from atr_core.formats.failures import failure_record

NS = "atr.extract"
FAILED = "failed"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"


class WindowKey(NamedTuple):
    """RunInference key: the clip and which window of it this example is."""

    clip: ClipInfo
    window: Window


@dataclass(frozen=True)
class InferenceFailure:
    """Stands in for a window's features when the model failed on it."""

    error_type: str
    message: str


def failed(audio_id: str, uri: str, stage: str, error_type: str, message: str) -> beam.pvalue.TaggedOutput:
    """A failure record on the ``failed`` (dead-letter) output of a DoFn."""
    return beam.pvalue.TaggedOutput(FAILED, failure_record(audio_id, uri, stage, error_type, message))


def counter(name: str):
    """The job's Beam counter ``name`` (in :data:`NS`)."""
    return Metrics.counter(NS, name)
