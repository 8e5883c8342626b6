"""The segment-embedding shard format (Parquet), its writer helpers and its public reader.

One row per clip. Schema version 1 (see docs/shards.md):

=====================  ===================================  ======================================
column                 type                                 meaning
=====================  ===================================  ======================================
audio_id               string                               join key for every later stage
uri                    string                               where the audio was read from
split                  string (nullable)                    split from the manifest, when known
duration_s             float64                              decoded duration in seconds
source_sample_rate     int32                                sample rate of the source file
source_channels        int32                                channel count of the source file
num_segments           int32                                T, rows of ``embedding``
feature                string                               ``cnn14`` or ``lms``
checkpoint_sha256      string                               sha256 of the CNN14 weights ("" for lms)
package_version        string                               atr version that wrote the row
embedding              list<fixed_size_list<float16|32, D>>  (T, D) segment embeddings
=====================  ===================================  ======================================

File (schema) metadata carries ``atr.schema_version`` and the producer identity, so a
reader can refuse shards it does not understand before touching a row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atr_core import __version__
from atr_core.errors import ConfigMismatchError, SchemaError
from atr_core.formats.parquet_files import list_parquet_files, read_schema_metadata
from atr_core.runtime.storage import open_uri

SCHEMA_VERSION = 1
KIND = "segments"
META_PREFIX = "atr."
DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


@dataclass(frozen=True)
class ShardIdentity:
    """What produced a shard set: checked by every consumer."""

    feature: str
    embedding_dim: int
    dtype: str = "float16"
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    package_version: str = __version__
    extra: dict[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[bytes, bytes]:
        """Parquet key-value metadata for this identity."""
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "kind": KIND,
            "feature": self.feature,
            "embedding_dim": str(self.embedding_dim),
            "dtype": self.dtype,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "package_version": self.package_version,
            "segment_hop_s": "0.32",
            "extra": json.dumps(self.extra, sort_keys=True),
        }
        return {(META_PREFIX + k).encode(): v.encode() for k, v in meta.items()}

    @classmethod
    def from_metadata(cls, meta: dict[bytes, bytes] | None, where: str) -> ShardIdentity:
        """Parse and validate shard metadata; raise :class:`SchemaError` naming ``where``."""
        meta = {k.decode(): v.decode() for k, v in (meta or {}).items()}
        version = meta.get(META_PREFIX + "schema_version")
        if version is None or meta.get(META_PREFIX + "kind") != KIND:
            raise SchemaError(
                f"{where}: not an atr segment shard (no atr.schema_version/atr.kind={KIND} metadata)"
            )
        if version != str(SCHEMA_VERSION):
            raise SchemaError(
                f"{where}: shard schema_version {version} is not supported; expected {SCHEMA_VERSION}"
            )
        g = lambda k: meta.get(META_PREFIX + k, "")  # noqa: E731
        return cls(
            feature=g("feature"),
            embedding_dim=int(g("embedding_dim")),
            dtype=g("dtype"),
            checkpoint=g("checkpoint"),
            checkpoint_sha256=g("checkpoint_sha256"),
            package_version=g("package_version"),
            extra=json.loads(g("extra") or "{}"),
        )


def segment_schema(identity: ShardIdentity) -> pa.Schema:
    """The Arrow schema (with metadata) of a segment shard for ``identity``."""
    if identity.dtype not in DTYPES:
        raise SchemaError(f"unsupported embedding dtype {identity.dtype!r}; use one of {sorted(DTYPES)}")
    vec = pa.list_(DTYPES[identity.dtype], identity.embedding_dim)
    return pa.schema(
        [
            pa.field("audio_id", pa.string(), nullable=False),
            pa.field("uri", pa.string()),
            pa.field("split", pa.string()),
            pa.field("duration_s", pa.float64()),
            pa.field("source_sample_rate", pa.int32()),
            pa.field("source_channels", pa.int32()),
            pa.field("num_segments", pa.int32()),
            pa.field("feature", pa.string()),
            pa.field("checkpoint_sha256", pa.string()),
            pa.field("package_version", pa.string()),
            pa.field("embedding", pa.list_(vec)),
        ],
        metadata=identity.metadata(),
    )


def rows_to_table(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    """Build one Arrow table from row dicts whose ``embedding`` is an ndarray (T, D).

    The embedding column is assembled from one contiguous buffer (no Python lists).
    """
    dim = schema.field("embedding").type.value_type.list_size
    value_type = schema.field("embedding").type.value_type.value_type
    np_dtype = np.float16 if value_type == pa.float16() else np.float32
    embs = [np.asarray(r["embedding"], dtype=np_dtype).reshape(-1, dim) for r in rows]
    offsets = np.zeros(len(embs) + 1, dtype=np.int32)
    np.cumsum([e.shape[0] for e in embs], out=offsets[1:])
    flat = np.concatenate(embs, axis=0).reshape(-1) if embs else np.zeros(0, np_dtype)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=value_type), dim)
    emb_col = pa.ListArray.from_arrays(pa.array(offsets), inner)
    cols = {}
    for f in schema:
        if f.name == "embedding":
            cols[f.name] = emb_col
        else:
            cols[f.name] = pa.array([r.get(f.name) for r in rows], type=f.type)
    return pa.Table.from_pydict(cols, schema=schema)


def table_embeddings(table: pa.Table) -> list[np.ndarray]:
    """The ``embedding`` column of a shard table as a list of (T, D) arrays (views, no copy per row)."""
    col = table.column("embedding").combine_chunks()
    dim = col.type.value_type.list_size
    offsets = col.offsets.to_numpy()
    flat = col.values.values.to_numpy(zero_copy_only=False)
    base = offsets[0]
    mat = flat[base * dim : offsets[-1] * dim].reshape(-1, dim)
    return [mat[offsets[i] - base : offsets[i + 1] - base] for i in range(len(col))]


def list_shards(pattern: str) -> list[str]:
    """Shard files matching a path, directory or glob (local or gs://), sorted; error if none."""
    return list_parquet_files(pattern, "shards")


def read_identity(path: str) -> ShardIdentity:
    """Read and validate one shard's identity without reading its rows."""
    return ShardIdentity.from_metadata(read_schema_metadata(path), path)


def iter_shard_tables(
    pattern: str, columns: Sequence[str] | None = None
) -> Iterator[tuple[str, ShardIdentity, pa.Table]]:
    """Yield (path, identity, table) for every shard, validating the schema version first."""
    for path in list_shards(pattern):
        with open_uri(path) as f:
            pf = pq.ParquetFile(f)
            ident = ShardIdentity.from_metadata(pf.schema_arrow.metadata, path)
            yield path, ident, pf.read(columns=list(columns) if columns else None)


def read_segments(pattern: str) -> Iterator[tuple[str, np.ndarray]]:
    """Every clip's segment embeddings in the shards at ``pattern``, shard by shard.

    Args:
        pattern: a shard file, a directory or a glob, local or gs:// (fsspec).

    Returns:
        An iterator of ``(audio_id, embeddings)``, embeddings a (T, D) array of the shard dtype.

    Raises:
        SchemaError: no shards found, or a shard of an unknown schema version.
    """
    for _, _, table in iter_shard_tables(pattern, columns=["audio_id", "embedding"]):
        ids = table.column("audio_id").to_pylist()
        yield from zip(ids, table_embeddings(table), strict=True)


def read_shard_audio_ids(path: str) -> list[str]:
    """The audio_ids of one shard file, in row order (identity validated, embeddings not read)."""
    with open_uri(path) as f:
        pf = pq.ParquetFile(f)
        ShardIdentity.from_metadata(pf.schema_arrow.metadata, path)
        return pf.read(columns=["audio_id"]).column("audio_id").to_pylist()


def read_audio_ids(pattern: str) -> set[str]:
    """The audio_ids already present in the shards at ``pattern`` (empty if there are none)."""
    try:
        paths = list_shards(pattern)
    except SchemaError:
        return set()
    return {aid for path in paths for aid in read_shard_audio_ids(path)}


def check_consistent(identities: Iterable[tuple[str, ShardIdentity]]) -> ShardIdentity:
    """All shards must share feature, dimension and checkpoint; return the common identity."""
    first: tuple[str, ShardIdentity] | None = None
    for path, ident in identities:
        if first is None:
            first = (path, ident)
            continue
        ref = first[1]
        for attr in ("feature", "embedding_dim", "checkpoint_sha256"):
            if getattr(ident, attr) != getattr(ref, attr):
                raise SchemaError(
                    f"{path}: {attr}={getattr(ident, attr)!r} differs from "
                    f"{first[0]}: {attr}={getattr(ref, attr)!r}; shards of one set must agree"
                )
    if first is None:
        raise SchemaError("no shards")
    return first[1]


def check_appendable(paths: Iterable[str], identity: ShardIdentity) -> None:
    """Shards at ``paths`` were written with ``identity``'s feature, dimension, dtype and weights.

    A run that adds shards to an existing set (``--incremental``) checks this first.

    Raises:
        ConfigMismatchError: the first shard that differs, e.g. ``<path> has dtype='float16' but this
            run has dtype='float32'``.
    """
    for path in paths:
        ident = read_identity(path)
        for attr in ("feature", "embedding_dim", "dtype", "checkpoint_sha256"):
            if getattr(ident, attr) != getattr(identity, attr):
                raise ConfigMismatchError(
                    f"{path} has {attr}={getattr(ident, attr)!r} "
                    f"but this run has {attr}={getattr(identity, attr)!r}"
                )
