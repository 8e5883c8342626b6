"""The retrieval-vector Parquet format: round trips, identity checks, refusals."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atr_core.errors import ConfigMismatchError, SchemaError
from atr_core.formats.shards import ShardIdentity, rows_to_table, segment_schema
from atr_core.formats.vectors import (
    SCHEMA_VERSION,
    VectorsIdentity,
    caption_id,
    read_vectors,
    read_vectors_identity,
    vectors_schema,
    vectors_table,
    write_vectors_file,
)

MODEL = {"name": "m0", "model_sha256": "ab" * 32, "feature": "cnn14"}


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write(tmp_path, name: str, ident: VectorsIdentity, **kw) -> str:
    path = str(tmp_path / name)
    write_vectors_file(path, vectors_table(vectors_schema(ident), **kw))
    return path


def test_round_trip_many_random_sets(tmp_path):
    rng = np.random.default_rng(0)
    for case in range(25):
        dim = int(rng.integers(1, 17))
        n_audio, n_caps = int(rng.integers(0, 9)), int(rng.integers(0, 9))
        ident = VectorsIdentity(embed_dim=dim, model={**MODEL, "case": str(case)})
        a_ids = [f"clip{case}_{i}.wav" for i in range(n_audio)]
        a_vec = _unit(rng, n_audio, dim)
        c_aud = [a_ids[i % n_audio] if n_audio else "ghost" for i in range(n_caps)]
        c_ids = [caption_id(a, i) for i, a in enumerate(c_aud)]
        c_txt = [f"caption {i} ünïcode" for i in range(n_caps)]
        c_vec = _unit(rng, n_caps, dim)
        d = tmp_path / f"case{case}"
        _write(d, "audio.parquet", ident, ids=a_ids, kind="audio", vectors=a_vec, split="test")
        _write(
            d,
            "captions.parquet",
            ident,
            ids=c_ids,
            kind="caption",
            vectors=c_vec,
            split="test",
            audio_ids=c_aud,
            captions=c_txt,
        )
        audio = read_vectors(str(d), kind="audio")
        caps = read_vectors(str(d), kind="caption")
        both = read_vectors(str(d))
        assert audio.ids == a_ids and audio.audio_ids == a_ids and audio.captions == [None] * n_audio
        np.testing.assert_array_equal(audio.vectors, a_vec)
        assert caps.ids == c_ids and caps.audio_ids == c_aud and caps.captions == c_txt
        np.testing.assert_array_equal(caps.vectors, c_vec)
        assert caps.vectors.shape == (n_caps, dim) and caps.vectors.dtype == np.float32
        assert len(both) == n_audio + n_caps
        assert set(both.kinds) <= {"audio", "caption"}
        assert audio.identity == ident and audio.identity.same_model(ident)


def test_split_filter_and_caption_id(tmp_path):
    rng = np.random.default_rng(1)
    ident = VectorsIdentity(embed_dim=4, model=MODEL)
    _write(tmp_path, "a.parquet", ident, ids=["x", "y"], kind="audio", vectors=_unit(rng, 2, 4), split="val")
    _write(tmp_path, "b.parquet", ident, ids=["z"], kind="audio", vectors=_unit(rng, 1, 4), split="test")
    assert read_vectors(str(tmp_path), split="val").ids == ["x", "y"]
    assert read_vectors(str(tmp_path), split="test").ids == ["z"]
    assert len(read_vectors(str(tmp_path), split="train")) == 0
    assert read_vectors(str(tmp_path), split="train").vectors.shape == (0, 4)
    assert caption_id("a/b.wav", 3) == "a/b.wav#3"


def test_metadata_carries_version_and_model(tmp_path):
    ident = VectorsIdentity(embed_dim=3, model=MODEL)
    path = _write(tmp_path, "v.parquet", ident, ids=["a"], kind="audio", vectors=np.ones((1, 3)))
    meta = pq.read_schema(path).metadata
    assert meta[b"atr.schema_version"] == str(SCHEMA_VERSION).encode()
    assert meta[b"atr.kind"] == b"vectors"
    assert read_vectors_identity(path) == ident
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_refuses_unknown_version(tmp_path):
    ident = VectorsIdentity(embed_dim=3, model=MODEL)
    table = vectors_table(vectors_schema(ident), ids=["a"], kind="audio", vectors=np.ones((1, 3)))
    meta = dict(table.schema.metadata)
    meta[b"atr.schema_version"] = b"99"
    path = tmp_path / "future.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(SchemaError, match=r"future\.parquet.*schema_version 99.*expected 1"):
        read_vectors(str(path))


def test_refuses_segment_shards_and_plain_parquet(tmp_path):
    ident = ShardIdentity(feature="cnn14", embedding_dim=4)
    schema = segment_schema(ident)
    row = {"audio_id": "a", "num_segments": 2, "embedding": np.zeros((2, 4))}
    pq.write_table(rows_to_table([row], schema), tmp_path / "shard.parquet")
    with pytest.raises(SchemaError, match="not an atr vectors file"):
        read_vectors(str(tmp_path / "shard.parquet"))
    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(SchemaError, match="plain.parquet"):
        read_vectors(str(tmp_path / "plain.parquet"))


def test_refuses_mixed_models_and_empty_dirs(tmp_path):
    a = VectorsIdentity(embed_dim=3, model=MODEL)
    b = VectorsIdentity(embed_dim=3, model={**MODEL, "model_sha256": "cd" * 32})
    _write(tmp_path, "a.parquet", a, ids=["a"], kind="audio", vectors=np.ones((1, 3)))
    _write(tmp_path, "b.parquet", b, ids=["b"], kind="audio", vectors=np.ones((1, 3)))
    with pytest.raises(ConfigMismatchError, match="b.parquet"):
        read_vectors(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="no .parquet vector files"):
        read_vectors(str(tmp_path / "empty"))


def test_writer_checks_shapes_and_kinds():
    schema = vectors_schema(VectorsIdentity(embed_dim=4, model=MODEL))
    with pytest.raises(SchemaError, match="2 ids but 1 vectors"):
        vectors_table(schema, ids=["a", "b"], kind="audio", vectors=np.ones((1, 4)))
    with pytest.raises(SchemaError, match="kind"):
        vectors_table(schema, ids=["a"], kind="video", vectors=np.ones((1, 4)))
    with pytest.raises(SchemaError, match="audio_ids and captions"):
        vectors_table(schema, ids=["a#0"], kind="caption", vectors=np.ones((1, 4)))
    with pytest.raises(SchemaError, match="embed_dim"):
        vectors_schema(VectorsIdentity(embed_dim=0))
