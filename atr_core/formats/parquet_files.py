"""What the Parquet formats (segment shards, retrieval vectors) share: finding files, reading metadata."""

from __future__ import annotations

import pyarrow.parquet as pq

from atr_core.errors import SchemaError
from atr_core.runtime.storage import expand_glob, open_uri


def list_parquet_files(pattern: str, what: str) -> list[str]:
    """``.parquet`` files at a path, directory (recursive) or glob, local or remote, sorted.

    Raises:
        SchemaError: nothing matches (``what`` names the files in the message).
    """
    paths = [p for p in expand_glob(pattern) if p.endswith(".parquet")]
    if not paths:
        raise SchemaError(f"{pattern}: no .parquet {what} found")
    return paths


def read_schema_metadata(path: str) -> dict[bytes, bytes] | None:
    """The key-value metadata of a Parquet file's Arrow schema, without reading any rows."""
    with open_uri(path) as f:
        return pq.ParquetFile(f).schema_arrow.metadata
