"""Does a trained model fit its inputs, and what a run calls each model (no Beam, no torch)."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from typing import Any

from atr_core.errors import ConfigMismatchError, InputError

LOG = logging.getLogger(__name__)


def model_names(directories: Sequence[str]) -> list[str]:
    """Short unique names for model directories: the base name, else the path below the common parent.

    Raises:
        InputError: the same directory is listed twice.
    """
    clean = [d.rstrip("/") for d in directories]
    if len(set(clean)) != len(clean):
        raise InputError(f"--model lists the same directory twice: {', '.join(directories)}")
    base = [posixpath.basename(d) or d for d in clean]
    if len(set(base)) == len(base):
        return base
    split = [d.split("/") for d in clean]
    common = 0
    while all(len(p) > common + 1 for p in split) and len({p[common] for p in split}) == 1:
        common += 1
    return ["_".join(p[common:]) for p in split]


def check_model_against_shards(directory: str, config: Any, shards_identity: Any, shards_where: str) -> None:
    """Feature, dimension and CNN14 checkpoint of a model config must match the shards.

    Args:
        directory: the model directory (for the message).
        config: its ``ModelConfig``.
        shards_identity: the shards' ``ShardIdentity``.
        shards_where: where the shards are (for the message).

    Raises:
        ConfigMismatchError: every difference found, in one message.
    """
    problems = []
    if config.feature != shards_identity.feature:
        problems.append(f"feature {config.feature!r} != shards feature {shards_identity.feature!r}")
    if config.audio_dim != shards_identity.embedding_dim:
        problems.append(
            f"audio_dim {config.audio_dim} != shards embedding_dim {shards_identity.embedding_dim}"
        )
    if (
        config.checkpoint_sha256
        and shards_identity.checkpoint_sha256
        and (config.checkpoint_sha256 != shards_identity.checkpoint_sha256)
    ):
        problems.append(
            f"CNN14 checkpoint sha256 {config.checkpoint_sha256[:12]}... != shards "
            f"{shards_identity.checkpoint_sha256[:12]}..."
        )
    if problems:
        raise ConfigMismatchError(
            f"model {directory} does not fit the shards at {shards_where}: "
            + "; ".join(problems)
            + " (the model was trained on other features)"
        )


def check_word_vectors_header(directory: str, recorded: dict[str, Any], spec: str) -> None:
    """``spec``'s vocabulary size and dim (its first line only) against a model's recorded vectors.

    The cheap launcher-side check of ``--word2vec``; the workers that load the vectors check the
    full identity (sha256) before encoding anything.

    Raises:
        ConfigMismatchError: another vocabulary size (after the recorded ``limit``) or dim.
        WordVectorsError: not a readable word2vec file.
    """
    from atr_core.text.word_vectors import read_header

    vocab, dim = read_header(spec)
    limit = recorded.get("limit")
    vocab = min(vocab, limit) if limit else vocab
    for key, got in (("vocab_size", vocab), ("dim", dim)):
        want = recorded.get(key)
        if want is not None and got != want:
            raise ConfigMismatchError(
                f"{directory}: word vectors {spec!r} have {key}={got}, but the model was trained with "
                f"{key}={want} (source {recorded.get('source')!r})"
            )
