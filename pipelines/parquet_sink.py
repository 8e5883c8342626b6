"""Beam sink that writes Arrow tables to Parquet shards, with dense vector columns left plain.

Beam's ``WriteToParquetBatched`` keeps pyarrow's defaults for every column: dictionary encoding and
min/max statistics. For embedding columns (lists of float16/float32) both are wasted work: the
dictionary overflows on the first page and falls back to plain encoding, and per-page minima and
maxima of embedding values serve no reader. This sink keeps both for the flat (scalar) columns,
where they make filters and ``audio_id`` scans cheap, and turns them off for nested columns, which
in atr's schemas are exactly the vectors. Files stay ordinary Parquet (PLAIN + the chosen codec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes


def flat_columns(schema: pa.Schema) -> list[str]:
    """Names of the schema's scalar columns (those that get dictionaries and statistics)."""
    return [f.name for f in schema if not pa.types.is_nested(f.type)]


@dataclass
class _OpenShard:
    handle: Any
    writer: pq.ParquetWriter


class ParquetTableSink(filebasedsink.FileBasedSink):
    """A ``FileBasedSink`` whose records are Arrow tables; each table becomes one row group.

    ``skip_if_empty``: write no file at all when the input is empty (by default one empty shard).
    """

    def __init__(
        self,
        file_path_prefix: str,
        schema: pa.Schema,
        *,
        codec: str = "zstd",
        num_shards: int = 0,
        shard_name_template: str | None = None,
        file_name_suffix: str = ".parquet",
        skip_if_empty: bool = False,
    ):
        super().__init__(
            file_path_prefix,
            coder=None,
            file_name_suffix=file_name_suffix,
            num_shards=num_shards,
            shard_name_template=shard_name_template,
            mime_type="application/x-parquet",
            compression_type=CompressionTypes.UNCOMPRESSED,  # the Parquet codec compresses pages
            skip_if_empty=skip_if_empty,
        )
        self._schema = schema
        self._codec = codec
        self._flat = flat_columns(schema)

    def open(self, temp_path: str) -> _OpenShard:
        handle = super().open(temp_path)
        try:
            writer = pq.ParquetWriter(
                handle,
                self._schema,
                compression=self._codec,
                use_dictionary=self._flat,
                write_statistics=self._flat,
            )
        except Exception:
            handle.close()
            raise
        return _OpenShard(handle, writer)

    def write_record(self, file_handle: _OpenShard, value: pa.Table) -> None:
        file_handle.writer.write_table(value)

    def close(self, file_handle: _OpenShard) -> None:
        file_handle.writer.close()
        file_handle.handle.close()

    def display_data(self) -> dict:
        return {**super().display_data(), "codec": self._codec, "schema": str(self._schema)}


class WriteParquetTables(beam.PTransform):
    """Write a PCollection of Arrow tables (all of ``schema``) to ``<prefix><shard><suffix>`` files."""

    def __init__(self, file_path_prefix: str, schema: pa.Schema, **sink_args: Any):
        super().__init__()
        self._sink = ParquetTableSink(file_path_prefix, schema, **sink_args)

    def expand(self, pcoll):
        return pcoll | beam.io.Write(self._sink)
