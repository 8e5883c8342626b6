"""The trained-model directory shared by train, embed and search.

Layout (schema version 1)::

    <dir>/model.pt        state_dict only (loads with torch.load(weights_only=True))
    <dir>/config.json     {"schema_version", "kind", "package_version", "files": {"model.pt": sha256},
                           "config": ModelConfig.to_dict()}
    <dir>/word_vectors/   vectors.bin + identity.json, only for vectors trained with train:DIM

Pretrained word vectors are not copied: ``config.word_vectors`` records their identity (source,
sha256, vocab size, dim, limit) and :func:`load_model` reloads and checks them. Every file is
written under a temporary name and renamed into place, ``config.json`` last, so a directory with a
``config.json`` is complete. ``dir`` may be a local path or any fsspec URL (gs://...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

from atr_core import __version__
from atr_core.errors import AtrError, CheckpointError, ConfigMismatchError
from atr_core.formats.sidecar import read_sidecar
from atr_core.model.retrieval import ModelConfig, RetrievalModel
from atr_core.runtime.storage import join_uri
from atr_core.text.word_vectors import TRAINED_SHA256, WordVectors, load_word_vectors

SCHEMA_VERSION = 1
KIND = "atr-model"
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
WORD_VECTORS_DIR = "word_vectors"
ARCHITECTURE_FIELDS = (
    "audio_dim",
    "text_dim",
    "embed_dim",
    "aggregation",
    "audio_clusters",
    "text_clusters",
    "lstm_hidden",
    "use_mask",
)


def save_model(
    directory: str | os.PathLike,
    model: RetrievalModel,
    config: ModelConfig,
    word_vectors: WordVectors | None,
) -> None:
    """Write ``model.pt``, ``config.json`` and (trained vectors only) ``word_vectors/`` into ``directory``.

    The saved config records ``word_vectors.identity`` (``config`` itself is not modified). Files of
    an earlier save are replaced; other files in the directory are left alone.
    """
    own = getattr(model, "config", None)
    if own is not None:
        for name in ARCHITECTURE_FIELDS:
            if getattr(own, name) != getattr(config, name):
                raise ConfigMismatchError(
                    f"{directory}: model was built with {name}={getattr(own, name)!r}, "
                    f"config says {getattr(config, name)!r}"
                )
    fs, root = fsspec.core.url_to_fs(str(directory))
    fs.makedirs(root, exist_ok=True)
    if word_vectors is not None:
        if word_vectors.dim != config.text_dim:
            raise ConfigMismatchError(
                f"{directory}: word vectors have dim {word_vectors.dim}, "
                f"model config text_dim {config.text_dim}"
            )
        config = dataclasses.replace(config, word_vectors=dict(word_vectors.identity))
        if word_vectors.identity.get("sha256") == TRAINED_SHA256:
            _save_word_vectors_dir(fs, root, word_vectors)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    payload = buf.getvalue()
    _write_atomic(fs, root, MODEL_FILE, payload)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "package_version": __version__,
        "files": {MODEL_FILE: hashlib.sha256(payload).hexdigest()},
        "config": config.to_dict(),
    }
    _write_atomic(fs, root, CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """Read and validate ``config.json``: (ModelConfig, the whole metadata dict)."""
    where = f"{directory}/{CONFIG_FILE}"
    meta = read_sidecar(
        where, kind=KIND, schema_version=SCHEMA_VERSION, what="model config",
        missing=CheckpointError, missing_hint="not a trained model directory",
    )
    return ModelConfig.from_dict(meta.get("config"), where=where), meta


def load_model(
    directory: str | os.PathLike,
    word_vectors: str | None = None,
    device: str | torch.device = "cpu",
    with_word_vectors: bool = True,
) -> tuple[RetrievalModel, ModelConfig, WordVectors | None]:
    """Load a model directory: (RetrievalModel in eval mode on ``device``, ModelConfig, WordVectors).

    Args:
        directory: the model directory (local or gs://) written by ``pipelines.train``.
        word_vectors: a word2vec file spec or saved word-vectors directory to use instead of the
            recorded source; it must match the recorded sha256, vocabulary size and dim.
        device: torch device for the model.
        with_word_vectors: False skips the word vectors (audio-only use; None in their place).

    Returns:
        ``(model in eval mode on device, its ModelConfig, its WordVectors or None)``.

    Raises:
        CheckpointError: a missing or unreadable file of the directory.
        SchemaError: not a model directory of a supported schema version.
        ConfigMismatchError: weights or word vectors that differ from what config.json records.
    """
    config, meta = read_config(directory)
    fs, root = fsspec.core.url_to_fs(str(directory))
    where = f"{directory}/{MODEL_FILE}"
    try:
        with fs.open(join_uri(root, MODEL_FILE), "rb") as f:
            payload = f.read()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{where}: missing") from exc
    expected = meta.get("files", {}).get(MODEL_FILE)
    if expected and hashlib.sha256(payload).hexdigest() != expected:
        raise ConfigMismatchError(f"{where}: sha256 differs from the one recorded in {CONFIG_FILE}")
    try:
        state = torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, ...
        raise CheckpointError(f"{where}: cannot load state_dict: {type(exc).__name__}: {exc}") from exc
    model = RetrievalModel(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigMismatchError(f"{where}: weights do not fit {CONFIG_FILE}: {exc}") from exc
    model.to(device).eval()
    wv = _load_word_vectors(fs, root, str(directory), config, word_vectors) if with_word_vectors else None
    return model, config, wv


def _load_word_vectors(
    fs: fsspec.AbstractFileSystem, root: str, directory: str, config: ModelConfig, override: str | None
) -> WordVectors:
    recorded = config.word_vectors
    if not recorded:
        raise ConfigMismatchError(f"{directory}/{CONFIG_FILE}: no word-vector identity recorded")
    if override is not None and Path(override, "identity.json").is_file():
        wv = WordVectors.load(override)
    elif override is not None:
        wv = load_word_vectors(override, limit=recorded.get("limit"))
    elif recorded.get("sha256") == TRAINED_SHA256:
        with tempfile.TemporaryDirectory(prefix="atr-wv-") as tmp:
            src = join_uri(root, WORD_VECTORS_DIR)
            if not fs.isdir(src):
                raise CheckpointError(f"{directory}/{WORD_VECTORS_DIR}: missing trained word vectors")
            for path in fs.ls(src, detail=False):
                fs.get_file(path, os.path.join(tmp, path.rstrip("/").rsplit("/", 1)[-1]))
            wv = WordVectors.load(tmp)
    else:
        wv = load_word_vectors(recorded["source"], limit=recorded.get("limit"))
    for key in ("sha256", "content_sha256", "vocab_size", "dim"):
        if key in recorded and wv.identity.get(key) != recorded[key]:
            raise ConfigMismatchError(
                f"{directory}: word vectors from {wv.identity.get('source')!r} have {key}="
                f"{wv.identity.get(key)!r}, but the model was trained with {key}={recorded[key]!r} "
                f"(source {recorded.get('source')!r})"
            )
    if wv.dim != config.text_dim:
        raise ConfigMismatchError(
            f"{directory}: word vectors dim {wv.dim} != model text_dim {config.text_dim}"
        )
    return wv


def _save_word_vectors_dir(fs: fsspec.AbstractFileSystem, root: str, wv: WordVectors) -> None:
    """Stage the vectors locally, upload under a temporary name, then swap it into place."""
    final = join_uri(root, WORD_VECTORS_DIR)
    tmp_remote = join_uri(root, f".{WORD_VECTORS_DIR}.tmp-{uuid.uuid4().hex}")
    with tempfile.TemporaryDirectory(prefix="atr-wv-") as tmp:
        wv.save(tmp)
        fs.makedirs(tmp_remote, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            fs.put_file(os.path.join(tmp, name), join_uri(tmp_remote, name))
    old = join_uri(root, f".{WORD_VECTORS_DIR}.old-{uuid.uuid4().hex}")
    try:
        if fs.exists(final):
            fs.mv(final, old, recursive=True)
        fs.mv(tmp_remote, final, recursive=True)
    except Exception as exc:
        if fs.exists(tmp_remote):
            fs.rm(tmp_remote, recursive=True)
        raise AtrError(f"{final}: cannot move word vectors into place: {exc}") from exc
    if fs.exists(old):
        fs.rm(old, recursive=True)


def _write_atomic(fs: fsspec.AbstractFileSystem, root: str, name: str, data: bytes) -> None:
    """Write ``data`` to ``root/name`` through a temporary name and a rename."""
    final = join_uri(root, name)
    tmp = join_uri(root, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, final)
        else:
            fs.mv(tmp, final)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
