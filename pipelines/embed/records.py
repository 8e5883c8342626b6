"""What the embed transforms pass each other: element types, output tags, counter and file names."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from apache_beam.metrics import Metrics

LOG = logging.getLogger(__name__)
NS = "atr.embed"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
MISSING = "missing"
FAILED = "failed"
SUMMARY_FILE = "summary-embed.json"


def counter(name: str):
    """A Beam counter in the embed namespace (summed into the run summary)."""
    return Metrics.counter(NS, name)


@dataclass(frozen=True)
class CaptionRecord:
    """One caption to embed (the RunInference key; the text is the example)."""

    caption_id: str
    audio_id: str
    split: str
    text: str


class Vector(NamedTuple):
    """One retrieval vector on its way to a file and to the ranking."""

    id: str
    kind: str
    split: str
    audio_id: str
    caption: str | None
    vector: np.ndarray
