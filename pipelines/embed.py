"""Beam pipeline: trained model(s) -> retrieval vectors, corpus-scale metrics and an evaluation report.

    python -m pipelines.embed --segments 'shards/*.parquet' \\
        --captions clotho_captions_evaluation.csv --model runs/seed0 --output vectors/

Data flow (named transforms, per model ``M`` and split ``S``)::

    ShardFiles -> ReadShards -> SelectClips -> PrepareAudio[M] -> EmbedAudio[M] -> AudioVectors[M]
    CaptionFiles -> ReadCaptions -> KeyCaptions[M] -> EmbedCaptions[M] -> CaptionVectors[M]   (RunInference)
    SplitAudio[M] / SplitCaptions[M] -> WriteAudio[M,S] / WriteCaptions[M,S]
    ranking: CollectAudio -> AudioIndex (side input); BlockCaptions -> MakeBlocks -> OwnScores
             -> MergeOwnScores -> Window (side input); ScoreBlocks -> MergeCounts -> Metrics -> Report[M,S]
    several --model: AllReports -> GroupBySplit -> Aggregate (mean +- std) -> <output>/<S>/

Outputs: ``<output>/<model>/<split>/audio-SSSSS-of-NNNNN.parquet`` and ``captions-*.parquet``
(atr_core.formats.vectors schema), ``metrics.json`` + ``report.md``/``report.html`` + PNGs
(atr_core.evaluation.report) next to them, and ``<output>/summary-embed.json``. The model directory is checked
against the shards (feature, dimension, CNN14 checkpoint) and the word vectors before any work.
See docs/embed.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from atr_core import __version__
from atr_core.errors import ConfigMismatchError, InputError, OutputExistsError
from atr_core.evaluation import metrics
from atr_core.formats import manifest, vectors
from atr_core.formats.manifest import ClipEntry
from atr_core.formats.shards import table_embeddings
from atr_core.search.searcher import encode_captions, encode_segments, prepare_segments
from atr_core.training.data import JoinReport, ShardIndex, join_captions, scan_shards
from pipelines.common import (
    OptionGroup,
    collect_counters,
    exit_process,
    options_parser,
    run_cli,
    with_default_runner,
    write_json,
)
from pipelines.parquet_sink import WriteParquetTables

LOG = logging.getLogger("pipelines.embed")
NS = "atr.embed"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
MISSING = "missing"
FAILED = "failed"
SUMMARY_FILE = "summary-embed.json"


# ----------------------------------------------------------------------------------------------- options


class EmbedOptions(PipelineOptions):
    """Options of the embedding pipeline (Beam runner options are accepted as well)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        src = OptionGroup(parser.add_argument_group("inputs"))
        src.add_argument(
            "--segments",
            default=None,
            help="segment shards written by pipelines.extract: a .parquet file, a directory or a glob, "
            "local or gs:// (required)",
        )
        src.add_argument(
            "--captions",
            nargs="+",
            default=None,
            help="one or more captions files (Clotho CSV, AudioCaps CSV or JSON Lines); every clip they "
            "list is embedded and evaluated within its split (required)",
        )
        src.add_argument(
            "--split",
            nargs="+",
            default=None,
            help="split of the captions files: one name for all, or one per --captions file "
            "(train/val/test or development/validation/evaluation); default: from the JSONL 'split' "
            "field or the file name",
        )
        src.add_argument(
            "--captions_format",
            default="auto",
            choices=manifest.FORMATS,
            help="format of the --captions files (default: detected from the header / first line)",
        )
        src.add_argument(
            "--model",
            nargs="+",
            default=None,
            help="one or more trained model directories (pipelines.train --output; local or gs://). "
            "Several directories (e.g. seeds) also give an aggregate report with mean +- std (required)",
        )
        src.add_argument(
            "--word2vec",
            default=None,
            help="word vectors to use instead of the source recorded in the model config (a word2vec "
            "file, local/gs:///https://, or a saved word-vectors directory); must have the recorded "
            "identity (sha256, vocabulary size, dim)",
        )
        out = OptionGroup(parser.add_argument_group("outputs"))
        out.add_argument(
            "--output",
            default=None,
            help="output directory (local or gs://): <output>/<model>/<split>/ vectors and report, "
            "<output>/<split>/ aggregate report with several models (required)",
        )
        out.add_argument(
            "--overwrite",
            action="store_true",
            help="replace vectors and reports already in --output (without it such an --output is refused)",
        )
        out.add_argument(
            "--examples",
            type=int,
            default=5,
            help="qualitative examples per direction in the report (sampled queries with their top 5; "
            "default 5, 0 for none)",
        )
        out.add_argument("--seed", type=int, default=0, help="seed for sampling report examples (default 0)")
        out.add_argument(
            "--rows_per_row_group",
            type=int,
            default=1024,
            help="vectors per Parquet row group (default 1024)",
        )
        run = OptionGroup(parser.add_argument_group("inference and ranking"))
        run.add_argument(
            "--device",
            default="auto",
            choices=("auto", "cpu", "cuda"),
            help="torch device on the workers (auto: cuda when available, else cpu)",
        )
        run.add_argument(
            "--batch_size", type=int, default=64, help="max clips or captions per model batch (default 64)"
        )
        run.add_argument(
            "--block_size",
            type=int,
            default=metrics.DEFAULT_BLOCK_SIZE,
            help="captions per ranking block: each block is scored against all clips of its split on "
            f"one worker (memory ~ block_size x clips x 4 bytes; default {metrics.DEFAULT_BLOCK_SIZE})",
        )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser behind ``python -m pipelines.embed --help``."""
    return options_parser(
        "python -m pipelines.embed",
        "Embed segment shards and captions with trained model(s), evaluate retrieval per split "
        "(the paper's R@1/5/10, MedR, MeanR) and write vectors plus a report.",
        EmbedOptions,
        epilog="Beam pipeline options are accepted too, e.g. --runner=DataflowRunner --project=... "
        "--region=... --temp_location=gs://... --setup_file=./setup.py (local default: "
        "--runner=FnApiRunner). See docs/embed.md.",
    )


# ------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ModelPlan:
    """One model directory, checked against the shards and the word vectors."""

    directory: str
    name: str
    max_segments: int
    max_words: int
    embed_dim: int
    identity: dict[str, str]


@dataclass(frozen=True)
class CaptionRecord:
    """One caption to embed (the RunInference key; the text is the example)."""

    caption_id: str
    audio_id: str
    split: str
    text: str


class Vector(NamedTuple):
    """One retrieval vector on its way to a file and to the ranking."""

    id: str
    kind: str
    split: str
    audio_id: str
    caption: str | None
    vector: np.ndarray


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
        return _join(self.output, model, split)

    def clips_in(self, split: str) -> int:
        return sum(1 for s in self.clip_split.values() if s == split)

    def captions_in(self, split: str) -> int:
        return self.caption_counts.get(split, 0)


def _join(root: str, *parts: str) -> str:
    return posixpath.join(root.rstrip("/"), *parts) if "://" in root else os.path.join(root, *parts)


def model_names(directories: Sequence[str]) -> list[str]:
    """Short unique names for model directories: the base name, else the path below the common parent."""
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
    """Feature, dimension and CNN14 checkpoint of a model config must match the shards."""
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
    """Check every input and build the :class:`EmbedPlan` (raises before any pipeline work)."""
    from atr_core import model_io  # torch import: only when planning a run

    for flag in ("segments", "captions", "model", "output"):
        if not getattr(opts, flag):
            raise InputError(f"--{flag} is required (see --help)")
    for flag in ("batch_size", "block_size", "rows_per_row_group"):
        if getattr(opts, flag) < 1:
            raise InputError(f"--{flag} must be >= 1, got {getattr(opts, flag)}")
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
    # Word vectors last (slow for GoogleNews): once per distinct recorded identity; a mismatch with
    # the model raises ConfigMismatchError.
    checked: list[dict] = []
    for directory, _, config, _ in configs:
        if config.word_vectors not in checked:
            model_io.load_model(directory, word_vectors=opts.word2vec, device="cpu")
            checked.append(config.word_vectors)
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
        dirs += [_join(plan.output, s) for s in plan.splits]
    existing = []
    for d in dirs:
        if FileSystems.exists(d):
            existing.extend(m.path for m in FileSystems.match([_join(d, "*")])[0].metadata_list)
    return sorted(existing)


# ------------------------------------------------------------------------------------------- transforms


def _counter(name: str):
    return Metrics.counter(NS, name)


class ReadCaptions(beam.DoFn):
    """A captions file -> :class:`CaptionRecord` s of the clips to embed (those of ``clip_split``).

    Read on the workers (not shipped in the job graph); the launcher read the same files to plan.
    """

    def __init__(self, clip_split: dict[str, str], fmt: str):
        self._clip_split = clip_split
        self._fmt = fmt

    def setup(self) -> None:
        self._read = _counter("captions_read")

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
        self._read = _counter("shard_clips_read")
        self._selected = _counter("clips_selected")
        self._unused = _counter("clips_without_captions")

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


def _torch_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available on this worker")
    return torch.device(name)


class AudioEncoderHandler(PytorchModelHandlerTensor):
    """RunInference handler: (T, D) segment arrays -> unit audio vectors, via ``model.encode_audio``.

    The trained model is loaded once per worker with ``atr_core.model.directory.load_model`` (no word
    vectors). Each batch is zero-padded to the model's ``max_segments`` with a mask, exactly like the
    training loader; the masked aggregation makes a clip's vector independent of its batch.
    """

    def __init__(self, model_dir: str, max_segments: int, device: str = "auto", batch_size: int = 64):
        super().__init__(device="CPU", min_batch_size=1, max_batch_size=batch_size)
        self._model_dir = model_dir
        self._max_segments = max_segments
        self._device_name = device

    def load_model(self) -> Any:
        from atr_core.model import directory as model_io

        self._device = _torch_device(self._device_name)
        model, _, _ = model_io.load_model(self._model_dir, device=self._device, with_word_vectors=False)
        return model

    def run_inference(
        self, batch: Sequence[np.ndarray], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        vecs = encode_segments(model, batch, self._max_segments, self._device)
        return [PredictionResult(None, v, self._model_dir) for v in vecs]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return int(sum(np.asarray(b).nbytes for b in batch))

    def get_metrics_namespace(self) -> str:
        return NS


@dataclass
class TextModel:
    """What a text worker loads: the model, its word vectors, the caption cap and the device.

    (A class, not a tuple: RunInference keeps loaded models in weak references.)
    """

    net: Any
    word_vectors: Any
    max_words: int
    device: Any


class TextEncoderHandler(ModelHandler[str, PredictionResult, TextModel]):
    """RunInference handler: caption strings -> unit text vectors (word vectors + ``model.encode_text``)."""

    def __init__(self, model_dir: str, word2vec: str | None, device: str = "auto", batch_size: int = 64):
        super().__init__(min_batch_size=1, max_batch_size=batch_size)
        self._model_dir = model_dir
        self._word2vec = word2vec
        self._device_name = device

    def load_model(self) -> Any:
        from atr_core.model import directory as model_io

        device = _torch_device(self._device_name)
        model, config, wv = model_io.load_model(self._model_dir, word_vectors=self._word2vec, device=device)
        return TextModel(model, wv, config.max_words, device)

    def run_inference(
        self, batch: Sequence[str], model: TextModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        vecs = encode_captions(model.net, model.word_vectors, batch, model.max_words, model.device)
        return [PredictionResult(None, v, self._model_dir) for v in vecs]

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return int(sum(len(t.encode("utf-8")) for t in batch))

    def get_metrics_namespace(self) -> str:
        return NS


class ToVectors(beam.DoFn):
    """RunInference output -> :class:`Vector` records, counting them (and non-finite vectors)."""

    def __init__(self, kind: str, model: str, clip_split: dict[str, str] | None = None):
        self._kind = kind
        self._model = model
        self._clip_split = clip_split

    def setup(self) -> None:
        self._count = _counter(f"{self._kind}_vectors[{self._model}]")
        self._failed = _counter(f"{self._kind}_failed[{self._model}]")

    def process(self, item: tuple[Any, PredictionResult]) -> Iterator[Any]:
        key, result = item
        vec = np.asarray(result.inference, dtype=np.float32)
        if not np.isfinite(vec).all():
            self._failed.inc()
            what, split = (
                (key, self._clip_split[key]) if self._kind == "audio" else (key.caption_id, key.split)
            )
            yield beam.pvalue.TaggedOutput(
                FAILED,
                {
                    "model": self._model,
                    "kind": self._kind,
                    "id": what,
                    "split": split,
                    "error_type": "non_finite_vector",
                    "message": f"the {self._kind} vector of {what!r} is not finite (NaN/inf in its input?); "
                    "left out of the vectors and the metrics",
                },
            )
            return
        self._count.inc()
        if self._kind == "audio":
            yield Vector(key, "audio", self._clip_split[key], key, None, vec)
        else:
            yield Vector(key.caption_id, "caption", key.split, key.audio_id, key.text, vec)


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
        self._prefix = _join(directory, "audio" if kind == "audio" else "captions")
        self._schema = schema
        self._rows = rows_per_group

    def expand(self, pcoll):
        schema = self._schema
        return (
            pcoll
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._rows)
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


@dataclass
class AudioIndex:
    """A split's audio vectors as one matrix (rows sorted by audio_id), shared as a side input."""

    ids: list[str]
    matrix: np.ndarray

    @classmethod
    def build(cls, items: Iterable[Vector], dim: int) -> AudioIndex:
        items = sorted(items, key=lambda v: v.id)
        mat = np.stack([v.vector for v in items]) if items else np.zeros((0, dim), np.float32)
        return cls([v.id for v in items], np.ascontiguousarray(mat, dtype=np.float32))

    def positions(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.ids)}


class CaptionBlock(NamedTuple):
    """Captions of one ranking block: ids, clip indices into the AudioIndex, vectors."""

    ids: list[str]
    clip_index: np.ndarray
    vectors: np.ndarray


class MakeBlocks(beam.DoFn):
    """A batch of caption vectors -> a :class:`CaptionBlock`; captions whose clip has no vector go to
    the ``missing`` output (counted, reported)."""

    def setup(self) -> None:
        self._missing = _counter("captions_without_audio_vector")
        self._blocks = _counter("ranking_blocks")

    def process(self, batch: Sequence[Vector], index: AudioIndex) -> Iterator[Any]:
        pos = index.positions()
        keep = [v for v in batch if v.audio_id in pos]
        for v in batch:
            if v.audio_id not in pos:
                self._missing.inc()
                yield beam.pvalue.TaggedOutput(MISSING, v.id)
        if keep:
            self._blocks.inc()
            yield CaptionBlock(
                [v.id for v in keep],
                np.array([pos[v.audio_id] for v in keep], dtype=np.int64),
                np.stack([v.vector for v in keep]).astype(np.float32),
            )


def own_scores(block: CaptionBlock, index: AudioIndex) -> metrics.OwnScoreSummary:
    """Pass 1 of the exact distributed a2t ranking (see atr_core.evaluation.metrics)."""
    return metrics.own_score_summary(block.vectors, index.matrix, block.clip_index)


class MergeOwnScores(beam.CombineFn):
    """Merge pass-1 summaries of all blocks (None when the split has no block)."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, summary):
        return summary if acc is None else acc.merge(summary)

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is not None:
                out = a if out is None else out.merge(a)
        return out

    def extract_output(self, acc):
        return acc


def a2t_window(summary: metrics.OwnScoreSummary | None, index: AudioIndex) -> metrics.A2TWindow | None:
    return None if summary is None else metrics.a2t_window(summary, index.matrix)


def score_block(
    block: CaptionBlock, index: AudioIndex, window: metrics.A2TWindow
) -> tuple[list[str], np.ndarray, metrics.A2TCounts]:
    """Pass 2: one matmul per block gives its t2a ranks and mergeable a2t counts."""
    t2a, counts = metrics.score_block(block.vectors, index.matrix, block.clip_index, window)
    return block.ids, t2a, counts


class CombineScored(beam.CombineFn):
    """Merge scored blocks: t2a ranks by caption id, a2t counts summed (exact)."""

    def create_accumulator(self):
        return [], [], None

    def add_input(self, acc, scored):
        ids, ranks, counts = acc
        b_ids, b_ranks, b_counts = scored
        return (
            ids + list(b_ids),
            ranks + [np.asarray(b_ranks)],
            b_counts if counts is None else counts.merge(b_counts),
        )

    def merge_accumulators(self, accs):
        ids, ranks, counts = [], [], None
        for a_ids, a_ranks, a_counts in accs:
            ids += a_ids
            ranks += a_ranks
            if a_counts is not None:
                counts = a_counts if counts is None else counts.merge(a_counts)
        return ids, ranks, counts

    def extract_output(self, acc):
        ids, ranks, counts = acc
        return ids, (np.concatenate(ranks) if ranks else np.zeros(0)), counts


def split_metrics(
    scored: tuple[list[str], np.ndarray, metrics.A2TCounts | None],
    window: metrics.A2TWindow | None,
    index: AudioIndex,
) -> dict[str, Any]:
    """Metrics and rank vectors of one split from the merged block results."""
    ids, t2a, counts = scored
    if counts is None or window is None or not ids:
        raise InputError("no caption of this split has an audio vector: nothing to rank")
    a2t, a2t_clips = metrics.a2t_ranks_from_counts(counts, window)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    ranks = {"t2a": t2a[order], "a2t": a2t, "a2t_clips": a2t_clips}
    return {
        "metrics": metrics.metrics_from_ranks(ranks, len(index.ids)),
        "ranks": ranks,
        "caption_ids": [ids[i] for i in order],
    }


class WriteSplitReport(beam.DoFn):
    """Metrics + examples + metadata -> ``write_report`` in ``<output>/<model>/<split>``."""

    def __init__(self, plan: EmbedPlan, model: ModelPlan, split: str):
        self._plan = plan
        self._model = model
        self._split = split

    def process(
        self,
        result: dict,
        index: AudioIndex,
        caps: list[Vector],
        missing: list[str],
        written: list[str],
        failed: list[dict],
    ) -> Iterator[tuple[str, dict]]:
        from atr_core.evaluation import report

        plan, split = self._plan, self._split
        pos = index.positions()
        caps = sorted((v for v in caps if v.audio_id in pos), key=lambda v: v.id)
        examples = {}
        if plan.examples and caps:
            examples = report.qualitative_examples(
                np.stack([v.vector for v in caps]),
                index.matrix,
                [v.caption for v in caps],
                index.ids,
                np.array([pos[v.audio_id] for v in caps], dtype=np.int64),
                n_queries=plan.examples,
                top_k=5,
                seed=plan.seed,
            )
        failures = sorted((f for f in failed if f["split"] == split), key=lambda f: (f["kind"], f["id"]))
        metadata = run_metadata(plan, self._model, split, len(index.ids), len(caps), sorted(missing), written)
        metadata["failures"] = {"count": len(failures), "examples": failures[:20]}
        out_dir = plan.split_dir(self._model.name, split)
        report.write_report(
            out_dir, result["metrics"], ranks=result["ranks"], examples=examples, metadata=metadata
        )
        yield split, {"model": self._model.name, "metrics": result["metrics"], "metadata": metadata}


def run_metadata(
    plan: EmbedPlan,
    model: ModelPlan,
    split: str,
    n_clips: int,
    n_captions: int,
    missing_in_pipeline: list[str],
    written: list[str],
) -> dict[str, Any]:
    """Run metadata of one split's report: identities, counts and what is missing."""
    missing_clips = plan.join.captions_without_audio.get(split, [])
    return {
        "model": dict(model.identity),
        "model_dir": model.directory,
        "split": split,
        "features": dict(plan.shard_identity),
        "checkpoint_sha256": model.identity.get("checkpoint_sha256", ""),
        "word_vectors": plan.word2vec or model.identity.get("word_vectors_source", ""),
        "counts": {
            "clips_listed": plan.clips_in(split) + len(missing_clips),
            "captions_listed": plan.captions_in(split) + plan.missing_captions.get(split, 0),
            "clips_ranked": n_clips,
            "captions_ranked": n_captions,
        },
        "missing": {
            "clips_without_shard_row": {
                "count": len(missing_clips),
                "captions": plan.missing_captions.get(split, 0),
                "examples": missing_clips[:20],
            },
            "captions_without_audio_vector": {
                "count": len(missing_in_pipeline),
                "examples": missing_in_pipeline[:20],
            },
        },
        "vector_files": sorted(written),
        "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class WriteAggregate(beam.DoFn):
    """Several models: mean +- std over their metrics -> ``<output>/<split>/`` report."""

    def __init__(self, plan: EmbedPlan):
        self._plan = plan

    def process(self, item: tuple[str, Iterable[dict]]) -> Iterator[str]:
        from atr_core.evaluation import report

        split, runs = item
        runs = sorted(runs, key=lambda r: r["model"])
        agg = metrics.aggregate_runs([r["metrics"] for r in runs])
        metadata = {
            "split": split,
            "model": f"mean ± std of {len(runs)} models ({', '.join(r['model'] for r in runs)})",
            "models": [r["metadata"]["model"] for r in runs],
            "features": dict(self._plan.shard_identity),
            "counts": {r["model"]: r["metadata"]["counts"] for r in runs},
            "missing": runs[0]["metadata"]["missing"],
            "package_version": __version__,
        }
        mean = _means(agg)
        report.write_report(
            _join(self._plan.output, split),
            mean,
            ranks={},
            examples={},
            metadata=metadata,
            runs=[r["metrics"] for r in runs],
        )
        yield split


def _means(node: Any) -> Any:
    if isinstance(node, dict) and set(node) == {"mean", "std", "values"}:
        return node["mean"]
    if isinstance(node, dict):
        return {k: _means(v) for k, v in node.items()}
    return node


# -------------------------------------------------------------------------------------------- pipeline


def build_pipeline(p: beam.Pipeline, plan: EmbedPlan) -> None:
    """Add the embedding, writing, ranking and report transforms for ``plan`` to ``p``."""
    clips = (
        p
        | "ShardFiles" >> beam.Create(plan.shard_paths)
        | "ReadShards" >> beam.io.ReadAllFromParquetBatched(columns=["audio_id", "embedding"])
        | "SelectClips" >> beam.ParDo(SelectClips(frozenset(plan.clip_split)))
    )
    captions = (
        p
        | "CaptionFiles" >> beam.Create(plan.caption_files)
        | "ReadCaptions" >> beam.ParDo(ReadCaptions(plan.clip_split, plan.captions_format))
    )
    n_splits = len(plan.splits)
    split_no = {s: i for i, s in enumerate(plan.splits)}
    reports = []
    for m in plan.models:
        schema = vectors.vectors_schema(vectors.VectorsIdentity(m.embed_dim, m.identity))
        audio = (
            clips
            | f"PrepareAudio[{m.name}]"
            >> beam.MapTuple(lambda aid, seg, cap=m.max_segments: (aid, prepare_segments(seg, cap)))
            | f"EmbedAudio[{m.name}]"
            >> RunInference(
                KeyedModelHandler(
                    AudioEncoderHandler(m.directory, m.max_segments, plan.device, plan.batch_size)
                )
            )
            | f"AudioVectors[{m.name}]"
            >> beam.ParDo(ToVectors("audio", m.name, plan.clip_split)).with_outputs(FAILED, main="ok")
        )
        text = (
            captions
            | f"KeyCaptions[{m.name}]" >> beam.Map(lambda c: (c, c.text))
            | f"EmbedCaptions[{m.name}]"
            >> RunInference(
                KeyedModelHandler(
                    TextEncoderHandler(m.directory, plan.word2vec, plan.device, plan.batch_size)
                )
            )
            | f"CaptionVectors[{m.name}]"
            >> beam.ParDo(ToVectors("caption", m.name)).with_outputs(FAILED, main="ok")
        )
        failed = (audio[FAILED], text[FAILED]) | f"Failures[{m.name}]" >> beam.Flatten()
        audio, text = audio.ok, text.ok
        audio_by = audio | f"SplitAudio[{m.name}]" >> beam.Partition(lambda v, n: split_no[v.split], n_splits)
        text_by = text | f"SplitCaptions[{m.name}]" >> beam.Partition(
            lambda v, n: split_no[v.split], n_splits
        )
        for s in plan.splits:
            tag = f"{m.name},{s}"
            a_s, t_s = audio_by[split_no[s]], text_by[split_no[s]]
            out_dir = plan.split_dir(m.name, s)
            written_a = a_s | f"WriteAudio[{tag}]" >> WriteVectors(
                out_dir, "audio", schema, plan.rows_per_row_group
            )
            written_t = t_s | f"WriteCaptions[{tag}]" >> WriteVectors(
                out_dir, "caption", schema, plan.rows_per_row_group
            )
            written = (written_a, written_t) | f"Written[{tag}]" >> beam.Flatten()
            reports.append(rank_split(plan, m, s, a_s, t_s, written, failed, tag))
    if len(plan.models) > 1:
        (
            reports
            | "AllReports" >> beam.Flatten()
            | "GroupBySplit" >> beam.GroupByKey()
            | "Aggregate" >> beam.ParDo(WriteAggregate(plan))
        )


def rank_split(plan: EmbedPlan, m: ModelPlan, split: str, audio, text, written, failed, tag: str):
    """Exact distributed ranking of one (model, split) and its report; returns (split, run) records."""
    index = (
        audio
        | f"CollectAudio[{tag}]" >> beam.combiners.ToList()
        | f"AudioIndex[{tag}]" >> beam.Map(AudioIndex.build, m.embed_dim)
    )
    idx_side = beam.pvalue.AsSingleton(index)
    blocks = (
        text
        | f"BlockCaptions[{tag}]" >> beam.BatchElements(min_batch_size=1, max_batch_size=plan.block_size)
        | f"MakeBlocks[{tag}]" >> beam.ParDo(MakeBlocks(), idx_side).with_outputs(MISSING, main="blocks")
    )
    summary = (
        blocks.blocks
        | f"OwnScores[{tag}]" >> beam.Map(own_scores, idx_side)
        | f"MergeOwnScores[{tag}]" >> beam.CombineGlobally(MergeOwnScores())
    )
    window = summary | f"Window[{tag}]" >> beam.Map(a2t_window, idx_side)
    scored = (
        blocks.blocks
        | f"ScoreBlocks[{tag}]" >> beam.Map(score_block, idx_side, beam.pvalue.AsSingleton(window))
        | f"MergeCounts[{tag}]" >> beam.CombineGlobally(CombineScored())
    )
    result = scored | f"Metrics[{tag}]" >> beam.Map(split_metrics, beam.pvalue.AsSingleton(window), idx_side)
    return result | f"Report[{tag}]" >> beam.ParDo(
        WriteSplitReport(plan, m, split),
        idx_side,
        beam.pvalue.AsList(text),
        beam.pvalue.AsList(blocks[MISSING]),
        beam.pvalue.AsList(written),
        beam.pvalue.AsList(failed),
    )


# --------------------------------------------------------------------------------------------- summary


def make_summary(plan: EmbedPlan, counters: dict[str, int], state: str) -> dict[str, Any]:
    """Counts in = counts out + counts failed (or not used), per model, from the Beam metrics.

    Shard clips read = clips embedded + clips listed in no captions file; per model, clips to
    embed = audio vectors + audio failures and captions = caption vectors + caption failures.
    """
    n_clips = len(plan.clip_split)
    n_caps = sum(plan.caption_counts.values())
    read = counters.get("shard_clips_read", 0)
    selected = counters.get("clips_selected", 0)
    unused = counters.get("clips_without_captions", 0)
    models = {}
    caps_read = counters.get("captions_read", 0)
    balanced = read == selected + unused == plan.shard_identity["num_clips"] and selected == n_clips
    balanced &= caps_read == n_caps
    for m in plan.models:
        a = counters.get(f"audio_vectors[{m.name}]", 0)
        c = counters.get(f"caption_vectors[{m.name}]", 0)
        fa = counters.get(f"audio_failed[{m.name}]", 0)
        fc = counters.get(f"caption_failed[{m.name}]", 0)
        models[m.name] = {"audio_vectors": a, "audio_failed": fa, "caption_vectors": c, "caption_failed": fc}
        balanced &= a + fa == n_clips and c + fc == n_caps
    missing = sum(len(v) for v in plan.join.captions_without_audio.values())
    return {
        "state": state,
        "shard_clips_read": read,
        "clips_selected": selected,
        "clips_without_captions": unused,
        "captioned_clips_without_shard_row": missing,
        "captions_read": caps_read,
        "captions_embedded_per_model": n_caps,
        "captions_without_audio_vector": counters.get("captions_without_audio_vector", 0),
        "models": models,
        "splits": {s: {"clips": plan.clips_in(s), "captions": plan.captions_in(s)} for s in plan.splits},
        "manifest": plan.manifest_counts,
        "balanced": bool(balanced),
        "output": plan.output,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A few human-readable lines."""
    lines = [
        f"embed: {summary['shard_clips_read']} shard clips read = {summary['clips_selected']} embedded + "
        f"{summary['clips_without_captions']} without captions",
        f"embed: {summary['captioned_clips_without_shard_row']} captioned clips have no shard row (reported)",
    ]
    for name, counts in summary["models"].items():
        lines.append(
            f"embed: model {name}: {counts['audio_vectors']} audio vectors "
            f"(+{counts['audio_failed']} failed), {counts['caption_vectors']} caption vectors "
            f"(+{counts['caption_failed']} failed)"
        )
    lines.append(f"embed: counts balance: {summary['balanced']}; outputs in {summary['output']}")
    return "\n".join(lines)


def write_summary(plan: EmbedPlan, summary: dict[str, Any]) -> str:
    """Write the run summary into the output directory; return its path."""
    return write_json(_join(plan.output, SUMMARY_FILE), summary)


def run(
    argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None, wait: bool = True
) -> PipelineResult:
    """Build and run the embedding pipeline; print and write the summary.

    Args:
        argv: command-line flags (EmbedOptions plus any Beam pipeline options).
        test_pipeline: a pipeline to use instead of creating one (tests).
        wait: wait for the job and write the summary; False submits and returns (Flex Template launch).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    build_parser().parse_known_args(argv)  # --help and argparse errors before any work
    options = PipelineOptions(argv)
    plan = plan_run(options.view_as(EmbedOptions))
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build_pipeline(pipeline, plan)
    result = pipeline.run()
    if not wait:
        return result
    state = result.wait_until_finish()
    summary = make_summary(plan, collect_counters(result, NS), str(state))
    path = write_summary(plan, summary)
    print(format_summary(summary))
    LOG.info("summary written to %s", path)
    if not summary["balanced"]:
        LOG.error("counts do not balance (see %s)", path)
    return result


def main(argv: Sequence[str] | None = None) -> PipelineResult:
    """Entry point with the local default runner (FnApiRunner) unless --runner is given."""
    return run(with_default_runner(argv))


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: DoFns and element classes must pickle
    # by their real module name (pipelines.embed) for other processes and Dataflow workers.
    from pipelines import embed as _module

    exit_process(run_cli(_module.main, "embed"))
