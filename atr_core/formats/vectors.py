"""The retrieval-vector file format (Parquet), its writer helpers and its reader.

One row per embedded item: a clip (``kind = "audio"``) or a caption (``kind = "caption"``).
Schema version 1 (see docs/embed.md):

==========  ================================  ==============================================
column      type                              meaning
==========  ================================  ==============================================
id          string                            audio_id for a clip, ``<audio_id>#<n>`` for a caption
kind        string                            ``audio`` or ``caption``
split       string (nullable)                 split the item was embedded for
audio_id    string                            the clip (the clip itself for ``audio`` rows)
caption     string (nullable)                 the caption text (null for ``audio`` rows)
vector      fixed_size_list<float32, E>       the unit-length retrieval vector
==========  ================================  ==============================================

File (schema) metadata carries ``atr.schema_version``, ``atr.kind = vectors``, ``atr.embed_dim``
and ``atr.model``: the JSON identity of the model that produced the vectors (its name, weights
sha256, feature, CNN14 checkpoint sha256, word-vector identity). Readers refuse other versions
and refuse to mix vectors of different models.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atr_core import __version__
from atr_core.errors import ConfigMismatchError, SchemaError
from atr_core.formats.parquet_files import list_parquet_files, read_schema_metadata
from atr_core.runtime.storage import open_uri

SCHEMA_VERSION = 1
KIND = "vectors"
META_PREFIX = "atr."
VECTOR_KINDS = ("audio", "caption")


def caption_id(audio_id: str, index: int) -> str:
    """The stable id of caption ``index`` (0-based, file order) of clip ``audio_id``."""
    return f"{audio_id}#{index}"


@dataclass(frozen=True)
class VectorsIdentity:
    """What produced a vector set: the embedding size and the model identity (string map)."""

    embed_dim: int
    model: Mapping[str, str] = field(default_factory=dict)
    package_version: str = __version__

    def metadata(self) -> dict[bytes, bytes]:
        """Parquet key-value metadata for this identity."""
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "kind": KIND,
            "embed_dim": str(self.embed_dim),
            "model": json.dumps(dict(self.model), sort_keys=True),
            "package_version": self.package_version,
        }
        return {(META_PREFIX + k).encode(): v.encode() for k, v in meta.items()}

    @classmethod
    def from_metadata(cls, meta: Mapping[bytes, bytes] | None, where: str) -> VectorsIdentity:
        """Parse and validate vector-file metadata; raise :class:`SchemaError` naming ``where``."""
        meta = {k.decode(): v.decode() for k, v in (meta or {}).items()}
        version = meta.get(META_PREFIX + "schema_version")
        if version is None or meta.get(META_PREFIX + "kind") != KIND:
            raise SchemaError(f"{where}: not an atr vectors file (no atr.schema_version/atr.kind={KIND})")
        if version != str(SCHEMA_VERSION):
            raise SchemaError(
                f"{where}: vectors schema_version {version} is not supported; expected {SCHEMA_VERSION}"
            )
        try:
            return cls(
                embed_dim=int(meta[META_PREFIX + "embed_dim"]),
                model=json.loads(meta.get(META_PREFIX + "model") or "{}"),
                package_version=meta.get(META_PREFIX + "package_version", ""),
            )
        except (KeyError, ValueError) as exc:
            raise SchemaError(f"{where}: malformed vectors metadata: {exc}") from exc

    def same_model(self, other: VectorsIdentity) -> bool:
        """True when both identities name the same model and embedding size."""
        return self.embed_dim == other.embed_dim and dict(self.model) == dict(other.model)


def model_identity(config: Any, meta: Mapping[str, Any], name: str = "") -> dict[str, str]:
    """The identity of a trained model directory as recorded in vector files.

    ``config`` is its ``ModelConfig`` and ``meta`` the whole ``config.json`` (both from
    ``atr_core.model.directory.read_config``). Everything is a string so the map is JSON- and
    Parquet-metadata safe. ``name`` is informative only: :func:`same_model_identity` ignores it.
    """
    wv = dict(getattr(config, "word_vectors", {}) or {})
    files = dict(meta.get("files", {}) or {})
    return {
        "name": name,
        "model_sha256": str(files.get("model.pt", "")),
        "feature": str(config.feature),
        "audio_dim": str(config.audio_dim),
        "embed_dim": str(config.embed_dim),
        "aggregation": str(config.aggregation),
        "max_segments": str(config.max_segments),
        "max_words": str(config.max_words),
        "checkpoint_sha256": str(config.checkpoint_sha256),
        "word_vectors_source": str(wv.get("source", "")),
        "word_vectors_sha256": str(wv.get("content_sha256") or wv.get("sha256", "")),
        "package_version": str(meta.get("package_version", "")),
    }


IDENTITY_KEYS_IGNORED = ("name", "package_version")


def same_model_identity(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """True when two model identities name the same weights, features and word vectors."""
    strip = lambda m: {k: v for k, v in m.items() if k not in IDENTITY_KEYS_IGNORED}  # noqa: E731
    return strip(a) == strip(b)


def vectors_schema(identity: VectorsIdentity) -> pa.Schema:
    """The Arrow schema (with metadata) of a vectors file for ``identity``."""
    if identity.embed_dim <= 0:
        raise SchemaError(f"embed_dim must be positive, got {identity.embed_dim}")
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("split", pa.string()),
            pa.field("audio_id", pa.string(), nullable=False),
            pa.field("caption", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), identity.embed_dim), nullable=False),
        ],
        metadata=identity.metadata(),
    )


def vectors_table(
    schema: pa.Schema,
    *,
    ids: Sequence[str],
    kind: str,
    vectors: np.ndarray,
    split: str | None = None,
    audio_ids: Sequence[str] | None = None,
    captions: Sequence[str | None] | None = None,
) -> pa.Table:
    """One Arrow table of ``kind`` rows; ``vectors`` is (N, E). Audio rows default ``audio_id = id``."""
    if kind not in VECTOR_KINDS:
        raise SchemaError(f"vector kind must be one of {VECTOR_KINDS}, got {kind!r}")
    dim = schema.field("vector").type.list_size
    n = len(ids)
    vecs = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)).reshape(-1, dim)
    if vecs.shape[0] != n:
        raise SchemaError(f"{n} ids but {vecs.shape[0]} vectors of dimension {dim}")
    if kind == "caption" and (audio_ids is None or captions is None):
        raise SchemaError("caption vectors need audio_ids and captions")
    audio_ids = list(ids) if audio_ids is None else list(audio_ids)
    captions = [None] * n if captions is None else list(captions)
    if len(audio_ids) != n or len(captions) != n:
        raise SchemaError(f"{n} ids but {len(audio_ids)} audio_ids and {len(captions)} captions")
    vector_col = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), type=pa.float32()), dim)
    cols = {
        "id": pa.array(list(ids), type=pa.string()),
        "kind": pa.array([kind] * n, type=pa.string()),
        "split": pa.array([split] * n, type=pa.string()),
        "audio_id": pa.array(audio_ids, type=pa.string()),
        "caption": pa.array(captions, type=pa.string()),
        "vector": vector_col,
    }
    return pa.Table.from_pydict(cols, schema=schema)


def write_vectors_file(path: str, table: pa.Table) -> str:
    """Write ``table`` to ``path`` (local or URL) under a temporary name, then rename it into place."""
    fs, _, (target,) = fsspec.get_fs_token_paths(path)
    parent = posixpath.dirname(target) if "://" in path else os.path.dirname(target)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(target)}")
    try:
        with fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        fs.mv(tmp, target)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
    return path


@dataclass
class VectorSet:
    """Vectors read back from files: parallel columns plus the (N, E) float32 matrix."""

    identity: VectorsIdentity
    ids: list[str]
    kinds: list[str]
    splits: list[str | None]
    audio_ids: list[str]
    captions: list[str | None]
    vectors: np.ndarray
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, mask: np.ndarray) -> VectorSet:
        """The rows where boolean ``mask`` is true, in order."""
        idx = np.flatnonzero(mask)
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return VectorSet(
            self.identity,
            pick(self.ids),
            pick(self.kinds),
            pick(self.splits),
            pick(self.audio_ids),
            pick(self.captions),
            self.vectors[idx],
            list(self.paths),
        )


def list_vector_files(pattern: str) -> list[str]:
    """Vector files (``.parquet``) at a path, directory (recursive) or glob; error if none."""
    return list_parquet_files(pattern, "vector files")


def read_vectors_identity(path: str) -> VectorsIdentity:
    """Read and validate one vectors file's identity without reading its rows."""
    return VectorsIdentity.from_metadata(read_schema_metadata(path), path)


def read_vectors(pattern: str, kind: str | None = None, split: str | None = None) -> VectorSet:
    """Read every vectors file at ``pattern`` (file, directory or glob; local or gs://).

    Rows are filtered to ``kind`` and ``split`` when given and kept in file, then row, order.
    Unknown schema versions raise :class:`SchemaError`; files of different models raise
    :class:`ConfigMismatchError`.
    """
    if kind is not None and kind not in VECTOR_KINDS:
        raise SchemaError(f"vector kind must be one of {VECTOR_KINDS}, got {kind!r}")
    paths = list_vector_files(pattern)
    ident: VectorsIdentity | None = None
    first = ""
    tables: list[pa.Table] = []
    for path in paths:
        with open_uri(path) as f:
            pf = pq.ParquetFile(f)
            got = VectorsIdentity.from_metadata(pf.schema_arrow.metadata, path)
            if ident is None:
                ident, first = got, path
            elif not ident.same_model(got):
                raise ConfigMismatchError(
                    f"{path}: vectors of model {dict(got.model)} (dim {got.embed_dim}) differ from "
                    f"{first}: {dict(ident.model)} (dim {ident.embed_dim}); one vector set, one model"
                )
            table = pf.read()
        if kind is not None or split is not None:
            keep = np.ones(table.num_rows, dtype=bool)
            if kind is not None:
                keep &= np.asarray(table.column("kind").to_pylist(), dtype=object) == kind
            if split is not None:
                keep &= np.asarray(table.column("split").to_pylist(), dtype=object) == split
            table = table.filter(pa.array(keep))
        tables.append(table.select([f.name for f in vectors_schema(ident)]).cast(vectors_schema(ident)))
    assert ident is not None
    table = pa.concat_tables(tables) if tables else vectors_schema(ident).empty_table()
    dim = ident.embed_dim
    col = table.column("vector").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return VectorSet(
        identity=ident,
        ids=table.column("id").to_pylist(),
        kinds=table.column("kind").to_pylist(),
        splits=table.column("split").to_pylist(),
        audio_ids=table.column("audio_id").to_pylist(),
        captions=table.column("caption").to_pylist(),
        vectors=np.asarray(flat, dtype=np.float32).reshape(-1, dim),
        paths=paths,
    )
