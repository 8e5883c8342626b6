"""Reading the inputs on the workers (shards, captions files) and writing the vector files."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np

from atr_core.formats import manifest, vectors
from atr_core.formats.shards import table_embeddings
from atr_core.runtime.storage import join_uri
from pipelines.embed.records import SHARD_TEMPLATE, CaptionRecord, Vector, counter
from pipelines.parquet_sink import WriteParquetTables

LOG = logging.getLogger(__name__)


class ReadCaptions(beam.DoFn):
    """A captions file -> :class:`CaptionRecord` s of the clips to embed (those of ``clip_split``).

    Read on the workers (not shipped in the job graph); the launcher read the same files to plan.
    """

    def __init__(self, clip_split: dict[str, str], fmt: str):
        self._clip_split = clip_split
        self._fmt = fmt

    def setup(self) -> None:
        self._read = counter("captions_read")

    def process(self, item: tuple[str, str | None]) -> Iterator[CaptionRecord]:
        path, split = item
        for e in manifest.read_manifest(path, fmt=self._fmt, split=split):
            if self._clip_split.get(e.audio_id) != e.split:
                continue
            for i, text in enumerate(e.captions):
                self._read.inc()
                yield CaptionRecord(vectors.caption_id(e.audio_id, i), e.audio_id, e.split, text)


class SelectClips(beam.DoFn):
    """Shard row groups -> ``(audio_id, segments (T, D))`` for clips of a captions split; counts the rest."""

    def __init__(self, wanted: frozenset[str]):
        self._wanted = wanted

    def setup(self) -> None:
        self._read = counter("shard_clips_read")
        self._selected = counter("clips_selected")
        self._unused = counter("clips_without_captions")

    def process(self, table: Any) -> Iterator[tuple[str, np.ndarray]]:
        ids = table.column("audio_id").to_pylist()
        embs = table_embeddings(table) if table.num_rows else []
        for aid, emb in zip(ids, embs, strict=True):
            self._read.inc()
            if aid in self._wanted:
                self._selected.inc()
                yield aid, emb
            else:
                self._unused.inc()


def vectors_to_table(batch: Sequence[Vector], schema: Any) -> Any:
    """A batch of :class:`Vector` records (one kind) -> one Arrow table of the vectors schema."""
    return vectors.vectors_table(
        schema,
        ids=[v.id for v in batch],
        kind=batch[0].kind,
        vectors=np.stack([v.vector for v in batch]),
        split=batch[0].split,
        audio_ids=[v.audio_id for v in batch],
        captions=[v.caption for v in batch],
    )


class WriteVectors(beam.PTransform):
    """Batch vectors into Arrow tables and write ``<dir>/<kind>-SSSSS-of-NNNNN.parquet``."""

    def __init__(self, directory: str, kind: str, schema: Any, rows_per_group: int):
        super().__init__()
        self._prefix = join_uri(directory, "audio" if kind == "audio" else "captions")
        self._schema = schema
        self._rows = rows_per_group

    def expand(self, pcoll):
        schema = self._schema
        return (
            pcoll
            # fixed row groups (as extract's): the same vectors give the same file bytes
            | "Batch" >> beam.BatchElements(min_batch_size=self._rows, max_batch_size=self._rows)
            | "ToTable" >> beam.Map(vectors_to_table, schema)
            | "Write"
            >> WriteParquetTables(
                self._prefix,
                schema,
                codec="zstd",
                file_name_suffix=".parquet",
                shard_name_template=SHARD_TEMPLATE,
            )
        )
