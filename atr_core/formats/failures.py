"""Dead-letter (failure) records: one JSON object per input that did not become a shard row.

The extraction job writes them to ``failures[-<run>]-00000-of-00001.jsonl``; docs/shards.md lists the
``stage`` and ``error_type`` values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

#: The fields of every record, in order.
FIELDS = ("audio_id", "uri", "stage", "error_type", "message")


def failure_record(audio_id: str, uri: str, stage: str, error_type: str, message: str) -> dict[str, str]:
    """One dead-letter record (a line of failures-*.jsonl)."""
    return {"audio_id": audio_id, "uri": uri, "stage": stage, "error_type": error_type, "message": message}


def failure_line(record: Mapping[str, str]) -> str:
    """``record`` as one JSON line (without the newline), non-ASCII characters kept as they are."""
    return json.dumps(record, ensure_ascii=False)
