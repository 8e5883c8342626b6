"""File formats shared by the stages: input manifests, segment shards and retrieval vectors.

:mod:`.manifest` reads Clotho / AudioCaps / JSONL manifests and audio globs, :mod:`.shards` the
segment-embedding Parquet shards (extract -> train, embed), :mod:`.vectors` the retrieval-vector
Parquet files (embed -> search).
"""

from atr_core.formats.manifest import ClipEntry, read_glob, read_manifest
from atr_core.formats.shards import ShardIdentity, check_consistent, read_identity, read_segments
from atr_core.formats.vectors import VectorSet, VectorsIdentity, read_vectors, read_vectors_identity

__all__ = [
    "ClipEntry",
    "ShardIdentity",
    "VectorSet",
    "VectorsIdentity",
    "check_consistent",
    "read_glob",
    "read_identity",
    "read_manifest",
    "read_segments",
    "read_vectors",
    "read_vectors_identity",
]
