"""What an embed run will do, decided and checked on the launcher before any pipeline work."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from apache_beam.io.filesystems import FileSystems

from atr_core.errors import InputError, OutputExistsError
from atr_core.formats import manifest, vectors
from atr_core.formats.manifest import ClipEntry
from atr_core.model.compat import check_model_against_shards, check_word_vectors_header, model_names
from atr_core.runtime.checks import check_at_least_one
from atr_core.runtime.storage import join_uri
from atr_core.training.data import JoinReport, ShardIndex, join_captions, scan_shards
from pipelines.common import check_device
from pipelines.embed.options import EmbedOptions

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPlan:
    """One model directory, checked against the shards and the word vectors."""

    directory: str
    name: str
    max_segments: int
    max_words: int
    embed_dim: int
    identity: dict[str, str]


@dataclass
class EmbedPlan:
    """Everything decided before the pipeline runs (all checks done)."""

    output: str
    shard_paths: list[str]
    shard_identity: dict[str, Any]
    splits: list[str]
    clip_split: dict[str, str]
    caption_files: list[tuple[str, str | None]]
    captions_format: str
    caption_counts: dict[str, int]
    join: JoinReport
    models: list[ModelPlan]
    word2vec: str | None
    device: str
    batch_size: int
    block_size: int
    examples: int
    seed: int
    rows_per_row_group: int
    manifest_counts: dict[str, int] = field(default_factory=dict)
    missing_captions: dict[str, int] = field(default_factory=dict)

    def split_dir(self, model: str, split: str) -> str:
        """``<output>/<model>/<split>``: one model's vectors and report for one split."""
        return join_uri(self.output, model, split)

    def clips_in(self, split: str) -> int:
        """Clips of ``split`` to embed."""
        return sum(1 for s in self.clip_split.values() if s == split)

    def captions_in(self, split: str) -> int:
        """Captions of ``split`` to embed."""
        return self.caption_counts.get(split, 0)


def caption_files(paths: Sequence[str], splits: Sequence[str] | None) -> list[tuple[str, str | None]]:
    """(captions file, explicit split or None) pairs from --captions and --split."""
    if splits and len(splits) not in (1, len(paths)):
        raise InputError(
            f"--split takes one name or one per --captions file ({len(paths)}), got {len(splits)}"
        )
    if not splits:
        return [(p, None) for p in paths]
    return [(p, splits[0] if len(splits) == 1 else splits[i]) for i, p in enumerate(paths)]


def read_captions(paths: Sequence[str], splits: Sequence[str] | None, fmt: str) -> list[ClipEntry]:
    """All manifest entries of the --captions files; every entry must end with a split."""
    entries: list[ClipEntry] = []
    for path, split in caption_files(paths, splits):
        got = manifest.read_manifest(path, fmt=fmt, split=split)
        unknown = [e.audio_id for e in got if e.split is None]
        if unknown:
            raise InputError(
                f"{path}: cannot tell the split of {len(unknown)} clip(s) (e.g. {unknown[0]!r}); "
                "pass --split or name the split in the file name"
            )
        entries.extend(got)
    return entries


def plan_run(opts: EmbedOptions) -> EmbedPlan:
    """Check every input and build the :class:`EmbedPlan`, before any pipeline work.

    The model directories are checked against the shards (feature, dimension, CNN14 checkpoint)
    and against their word vectors; the captions are joined with the shards per split. Files
    already in the directories the run writes are deleted only with ``--overwrite``.

    Args:
        opts: the parsed :class:`EmbedOptions`.

    Returns:
        The plan the pipeline is built from.

    Raises:
        InputError: a required option missing, a bad count, no clips, no captions or an
            unusable split.
        ConfigMismatchError: a model that does not fit the shards or its word vectors.
        OutputExistsError: ``--output`` already holds outputs and ``--overwrite`` is not given.
    """
    from atr_core.model import directory as model_io  # torch import: only when planning a run

    for flag in ("segments", "captions", "model", "output"):
        if not getattr(opts, flag):
            raise InputError(f"--{flag} is required (see --help)")
    check_at_least_one(opts, ("batch_size", "block_size", "rows_per_row_group"))
    check_device(opts, opts.device)
    if opts.examples < 0:
        raise InputError(f"--examples must be >= 0, got {opts.examples}")

    names = model_names(opts.model)
    configs = []
    for directory, name in zip(opts.model, names, strict=True):
        config, meta = model_io.read_config(directory)
        configs.append((directory, name, config, meta))

    index: ShardIndex = scan_shards(opts.segments)
    if not index.num_segments:
        raise InputError(f"{opts.segments}: the shards hold no clips (empty corpus); nothing to embed")
    for directory, _, config, _ in configs:
        check_model_against_shards(directory, config, index.identity, opts.segments)

    entries = read_captions(opts.captions, opts.split, opts.captions_format)
    splits = sorted({e.split for e in entries if e.captions})
    if not splits:
        raise InputError(f"{', '.join(opts.captions)}: no clip has a caption; nothing to evaluate")
    clash = sorted(set(names) & set(splits))
    if clash:
        raise InputError(f"model name(s) {clash} equal split names; rename the model directories")
    by_split, join = join_captions(entries, index, splits)
    for split in splits:
        if not by_split[split]:
            missing = join.captions_without_audio[split]
            raise InputError(
                f"split {split!r}: none of its {len(missing)} captioned clips has a shard row in "
                f"{opts.segments} (e.g. {', '.join(missing[:3])}); nothing to embed for it"
            )
    for line in join.lines():
        LOG.info("join: %s", line)

    models = [
        ModelPlan(
            directory,
            name,
            config.max_segments,
            config.max_words,
            config.embed_dim,
            vectors.model_identity(config, meta, name),
        )
        for directory, name, config, meta in configs
    ]
    clip_split = {e.audio_id: s for s in splits for e in by_split[s]}
    plan = EmbedPlan(
        output=opts.output,
        shard_paths=list(index.paths),
        shard_identity={
            "pattern": opts.segments,
            "feature": index.identity.feature,
            "embedding_dim": index.identity.embedding_dim,
            "checkpoint": index.identity.checkpoint,
            "checkpoint_sha256": index.identity.checkpoint_sha256,
            "num_shards": len(index.paths),
            "num_clips": len(index.num_segments),
        },
        splits=splits,
        clip_split=clip_split,
        caption_files=caption_files(opts.captions, opts.split),
        captions_format=opts.captions_format,
        caption_counts={s: sum(len(e.captions) for e in by_split[s]) for s in splits},
        join=join,
        models=models,
        word2vec=opts.word2vec,
        device=opts.device,
        batch_size=opts.batch_size,
        block_size=opts.block_size,
        examples=opts.examples,
        seed=opts.seed,
        rows_per_row_group=opts.rows_per_row_group,
        missing_captions=_captions_of(entries, join.captions_without_audio),
        manifest_counts={
            "manifest_clips": len(entries),
            "manifest_captions": sum(len(e.captions) for e in entries),
        },
    )
    existing = existing_outputs(plan)
    if existing and not opts.overwrite:
        raise OutputExistsError(
            f"{plan.output}: already holds {len(existing)} output file(s) (e.g. {existing[0]}); "
            "pass --overwrite to replace them or choose another --output"
        )
    # Word vectors are loaded by the text workers (3.6 GB for GoogleNews: never on the launcher),
    # which check their full identity first; here only --word2vec's first line, against each model.
    if opts.word2vec:
        for directory, _, config, _ in configs:
            check_word_vectors_header(directory, config.word_vectors, opts.word2vec)
    if existing:
        FileSystems.delete(existing)
    return plan


def _captions_of(entries: Sequence[ClipEntry], clips_by_split: dict[str, list[str]]) -> dict[str, int]:
    """Number of captions of the listed clips, per split."""
    out = {}
    for split, clips in clips_by_split.items():
        wanted = set(clips)
        out[split] = sum(len(e.captions) for e in entries if e.split == split and e.audio_id in wanted)
    return out


def existing_outputs(plan: EmbedPlan) -> list[str]:
    """Files already in the directories this run would write (refused unless --overwrite)."""
    dirs = [plan.split_dir(m.name, s) for m in plan.models for s in plan.splits]
    if len(plan.models) > 1:
        dirs += [join_uri(plan.output, s) for s in plan.splits]
    existing = []
    for d in dirs:
        if FileSystems.exists(d):
            existing.extend(m.path for m in FileSystems.match([join_uri(d, "*")])[0].metadata_list)
    return sorted(existing)
