"""WriteParquetTables: Arrow tables -> Parquet shards; vectors plain, scalar columns indexed."""

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline

from atr_core.formats import shards
from pipelines.parquet_sink import WriteParquetTables, flat_columns


def _identity() -> shards.ShardIdentity:
    return shards.ShardIdentity(
        feature="cnn14",
        embedding_dim=16,
        dtype="float16",
        checkpoint="random:0",
        checkpoint_sha256="",
        package_version="test",
    )


def _rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "audio_id": f"clip{seed}_{i}",
            "uri": f"/a/clip{seed}_{i}.wav",
            "split": "evaluation",
            "duration_s": 1.0 + i,
            "source_sample_rate": 44100,
            "source_channels": 2,
            "num_segments": 1 + i,
            "feature": "cnn14",
            "checkpoint_sha256": "",
            "package_version": "test",
            "embedding": rng.standard_normal((1 + i, 16)).astype(np.float16),
        }
        for i in range(n)
    ]


def test_flat_columns_are_the_scalar_ones():
    schema = shards.segment_schema(_identity())
    assert "embedding" not in flat_columns(schema)
    assert {"audio_id", "uri", "num_segments"} <= set(flat_columns(schema))


def test_tables_round_trip_with_plain_vectors(tmp_path):
    schema = shards.segment_schema(_identity())
    batches = [_rows(5, 0), _rows(3, 1)]
    tables = [shards.rows_to_table(b, schema) for b in batches]
    with TestPipeline(runner="FnApiRunner") as p:
        _ = (
            p
            | beam.Create(tables, reshuffle=False)
            | WriteParquetTables(
                str(tmp_path / "segments"), schema, num_shards=1, shard_name_template="-SSSSS-of-NNNNN"
            )
        )
    (path,) = sorted(tmp_path.glob("segments*.parquet"))
    assert path.name == "segments-00000-of-00001.parquet"
    got = dict(shards.read_segments(str(path)))
    want = {r["audio_id"]: r["embedding"] for b in batches for r in b}
    assert got.keys() == want.keys()
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)
    assert shards.read_identity(str(path)) == _identity()  # schema metadata kept
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 2  # one row group per table
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        cols = {group.column(c).path_in_schema: group.column(c) for c in range(meta.num_columns)}
        emb = next(c for name, c in cols.items() if name.startswith("embedding"))
        assert not emb.has_dictionary_page and emb.statistics is None
        assert "PLAIN" in emb.encodings and emb.compression == "ZSTD"
        audio_id = cols["audio_id"]
        assert audio_id.statistics is not None and audio_id.statistics.has_min_max
        assert audio_id.has_dictionary_page


def test_empty_input_writes_a_readable_empty_shard(tmp_path):
    schema = pa.schema([pa.field("id", pa.string()), pa.field("vector", pa.list_(pa.float32(), 4))])
    with TestPipeline(runner="FnApiRunner") as p:
        _ = (
            p
            | beam.Create([], reshuffle=False).with_output_types(pa.Table)
            | WriteParquetTables(str(tmp_path / "audio"), schema, num_shards=1)
        )
    (path,) = sorted(tmp_path.glob("audio*.parquet"))
    assert pq.read_table(path).schema.equals(schema) and pq.read_table(path).num_rows == 0
