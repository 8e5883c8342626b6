"""Beam pipeline: audio files -> CNN14 (or log-mel) segment embeddings in Parquet shards.

    python -m pipelines.extract --input 'clips/*.wav' --output out/ --cnn14_checkpoint Cnn14_mAP=0.431.pth
    python -m pipelines.extract --captions clotho_captions_evaluation.csv --audio_root clotho/evaluation \\
        --output out/ --cnn14_checkpoint gs://bucket/Cnn14_mAP=0.431.pth

Data flow (named transforms): ReadInputs -> Dedupe -> Decode -> Window -> Batch -> RunInference ->
Stitch -> ToRows -> BatchRows -> WriteShards, plus WriteFailures for every input that did not become
a row. Every input ends as exactly one shard row or one failure record (or is skipped by
``--incremental``); the summary checks ``inputs = clips_ok + clips_failed + skipped_existing`` from
the Beam metrics. See docs/extract.md and docs/shards.md.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms import window as beam_window
from apache_beam.utils.windowed_value import WindowedValue

from atr_core import __version__
from atr_core.audio import features
from atr_core.audio.cnn14 import OFFICIAL_URL, CheckpointInfo
from atr_core.audio.decode import TARGET_SR, decode_audio, is_silent, pad_to_minimum
from atr_core.audio.windows import (
    DEFAULT_MAX_BATCH_SAMPLES,
    DEFAULT_MAX_WINDOW_S,
    Window,
    forward_exact_batch,
    model_device,
    plan_windows,
    stitch,
)
from atr_core.errors import ConfigMismatchError, DecodeError, InputError, OutputExistsError
from atr_core.formats import manifest, shards
from atr_core.formats.manifest import ClipEntry
from atr_core.runtime.cpu_memory import retain_freed_memory
from atr_core.runtime.idle_pool import IdlePriorityPool
from atr_core.runtime.storage import expand_glob
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

LOG = logging.getLogger("pipelines.extract")
NS = "atr.extract"
FAILED = "failed"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"


# ----------------------------------------------------------------------------------------------- options


class ExtractOptions(PipelineOptions):
    """Options of the extraction pipeline (Beam runner options are accepted as well)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        def group(title: str) -> OptionGroup:
            return OptionGroup(parser.add_argument_group(title))

        src = group("inputs (give --input, or --captions [+ --audio_root])")
        src.add_argument(
            "--input",
            default=None,
            help="glob of audio files, local or gs:// (Beam match syntax: '*' stays within one directory, "
            "'**' also crosses '/': 'data/**' is every file below data/, 'data/**/*.wav' needs a "
            "sub-directory). audio_id = path relative to the glob's non-wildcard root directory.",
        )
        src.add_argument(
            "--captions",
            default=None,
            help="captions/manifest file: Clotho v2.1 CSV, AudioCaps CSV or JSON Lines "
            "(see atr_core.formats.manifest). Every listed clip is processed; captions themselves "
            "are not used here.",
        )
        src.add_argument(
            "--audio_root",
            default=None,
            help="directory or gs:// prefix that manifest audio names are relative to "
            "(default: the directory holding --captions)",
        )
        src.add_argument(
            "--captions_format",
            default="auto",
            choices=manifest.FORMATS,
            help="format of --captions (default: detected from its header / first line)",
        )
        src.add_argument(
            "--audio_pattern",
            default=None,
            help="AudioCaps audio file name pattern over {youtube_id}, {start_time}, {audiocap_id} "
            f"(default: {manifest.DEFAULT_AUDIOCAPS_PATTERN!r})",
        )
        src.add_argument(
            "--split",
            default=None,
            help="split written to every row (train/val/test or development/validation/evaluation); "
            "default: from the manifest or the file/directory name, else empty",
        )
        out = group("outputs")
        out.add_argument(
            "--output",
            default=None,
            help="output directory (local or gs://) for segments-*.parquet, failures-*.jsonl and "
            "summary-<run>.json (required)",
        )
        out.add_argument(
            "--incremental",
            action="store_true",
            help="skip audio_ids already present in --output shards and write new shards under a "
            "run-specific name (without it, an --output that already holds shards is refused)",
        )
        out.add_argument(
            "--num_shards",
            type=int,
            default=0,
            help="number of segment shards (default 0: the runner decides, one per bundle); clips longer "
            "than --max_window_s get as many more, segments-long-*, when there are any. Shards are "
            "filled with whole row groups, so a shard can hold 0 rows when N exceeds the row groups",
        )
        out.add_argument(
            "--rows_per_row_group",
            type=int,
            default=64,
            help="clips per Parquet row group (one Arrow table per group; default 64)",
        )
        out.add_argument(
            "--run_id",
            default=None,
            help="name of this run in output file names (default: UTC time + random suffix)",
        )
        feat = group("features")
        feat.add_argument(
            "--features",
            default="cnn14",
            choices=sorted(features.FEATURES),
            help="cnn14 = PANNs CNN14 conv_block6 segment embeddings, 2048-d per 0.32 s (the paper); "
            "lms = 64-d log-mel (the paper's LMS baseline, needs no checkpoint)",
        )
        feat.add_argument(
            "--cnn14_checkpoint",
            default=None,
            help=f"CNN14 weights Cnn14_mAP=0.431.pth: local path, gs:// or https:// URL "
            f"(required for --features cnn14; official file: {OFFICIAL_URL.replace('%', '%%')}); "
            "'random:SEED' for tests",
        )
        feat.add_argument(
            "--cnn14_sha256", default=None, help="expected sha256 of --cnn14_checkpoint (checked when given)"
        )
        feat.add_argument(
            "--dtype",
            default="float16",
            choices=sorted(shards.DTYPES),
            help="storage dtype of embeddings (default float16; the model always runs in float32)",
        )
        run = group("inference")
        run.add_argument(
            "--device",
            default="auto",
            choices=("auto", "cpu", "cuda"),
            help="torch device on the workers (auto: cuda when available, else cpu)",
        )
        run.add_argument(
            "--batch_size", type=int, default=8, help="max clips (windows) per model batch (default 8)"
        )
        run.add_argument(
            "--max_batch_audio_s",
            type=float,
            default=DEFAULT_MAX_BATCH_SAMPLES / TARGET_SR,
            help="max total audio seconds per model batch; bounds activation memory (default %(default)g). "
            "A single window longer than this runs alone",
        )
        run.add_argument(
            "--max_window_s",
            type=float,
            default=DEFAULT_MAX_WINDOW_S,
            help=f"clips longer than this are split into overlapping windows and stitched back exactly "
            f"(default {DEFAULT_MAX_WINDOW_S:g} s, at least 4.16 s); bounds memory for long files",
        )
        run.add_argument(
            "--no_channels_last",
            dest="channels_last",
            action="store_false",
            help="do not convert the CNN to channels_last memory format (on by default; faster on CPU)",
        )
        run.add_argument(
            "--compile",
            action="store_true",
            help="torch.compile the model (faster steady state, ~30 s compile per new input shape)",
        )
        run.add_argument(
            "--num_threads", type=int, default=0, help="torch intra-op threads per worker (0 = torch default)"
        )
        run.add_argument(
            "--no_retain_memory",
            dest="retain_memory",
            action="store_false",
            help="leave glibc malloc's defaults alone on CPU workers (by default freed memory is kept "
            "for reuse: ~10%% faster CNN14 batches, a few hundred MB more resident)",
        )
        run.add_argument(
            "--decode_threads",
            type=int,
            default=0,
            help="audio decoding threads per worker (0 = the CPU count, at most 8)",
        )
        run.add_argument(
            "--decode_ahead",
            type=int,
            default=0,
            help="files decoded ahead of the model while it runs (0 = the larger of 2 x --decode_threads "
            "and --batch_size); each holds its 32 kHz waveform until used (77 MB for 10 minutes)",
        )
        run.add_argument(
            "--no_idle_decode",
            dest="idle_decode",
            action="store_false",
            help="run the decode threads at normal priority (by default they run at idle priority on "
            "Linux, using only the CPU time the model leaves free, and are raised while waited on)",
        )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser behind ``python -m pipelines.extract --help``."""
    return options_parser(
        "python -m pipelines.extract",
        "Extract CNN14 (or log-mel) segment embeddings of audio files into Parquet shards.",
        ExtractOptions,
        epilog="Beam pipeline options are accepted too, e.g. --runner=DataflowRunner --project=... "
        "--region=... --temp_location=gs://... (local default: --runner=FnApiRunner). "
        "See docs/extract.md.",
    )


# -------------------------------------------------------------------------------------- element types


class ClipInfo(NamedTuple):
    """What travels with every window of a clip up to its shard row."""

    audio_id: str
    uri: str
    split: str | None
    duration_s: float
    source_sample_rate: int
    source_channels: int
    n_samples: int
    n_windows: int


class WindowKey(NamedTuple):
    """RunInference key: the clip and which window of it this example is."""

    clip: ClipInfo
    window: Window


@dataclass(frozen=True)
class InferenceFailure:
    """Stands in for a window's features when the model failed on it."""

    error_type: str
    message: str


def failure_record(audio_id: str, uri: str, stage: str, error_type: str, message: str) -> dict[str, str]:
    """One dead-letter record (a line of failures-*.jsonl)."""
    return {"audio_id": audio_id, "uri": uri, "stage": stage, "error_type": error_type, "message": message}


def failed(audio_id: str, uri: str, stage: str, error_type: str, message: str) -> beam.pvalue.TaggedOutput:
    """A failure record on the ``failed`` (dead-letter) output of a DoFn."""
    return beam.pvalue.TaggedOutput(FAILED, failure_record(audio_id, uri, stage, error_type, message))


def _counter(name: str):
    return Metrics.counter(NS, name)


# ------------------------------------------------------------------------------------------ transforms


class FilterInputs(beam.DoFn):
    """Counts inputs; drops ids already extracted (--incremental); turns duplicates into failures."""

    def __init__(self, duplicate_positions: frozenset[int], existing_ids: frozenset[str]):
        self._dups = duplicate_positions
        self._existing = existing_ids

    def setup(self) -> None:
        self._inputs = _counter("inputs")
        self._skipped = _counter("skipped_existing")
        self._duplicates = _counter("duplicates")

    def process(self, item: tuple[int, ClipEntry]) -> Iterator[Any]:
        pos, entry = item
        self._inputs.inc()
        if entry.audio_id in self._existing:
            self._skipped.inc()
            return
        if pos in self._dups:
            self._duplicates.inc()
            msg = f"manifest entry #{pos + 1} repeats audio_id {entry.audio_id!r}; the first entry wins"
            yield failed(entry.audio_id, entry.uri, "manifest", "duplicate_audio_id", msg)
            return
        yield entry


def _is_missing(uri: str, exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    try:
        return not FileSystems.exists(uri)
    except Exception:  # noqa: BLE001 - the existence probe itself failed: not "missing"
        return False


@dataclass(frozen=True)
class DecodeOutcome:
    """What decoding one manifest entry gave: ``(ClipInfo, waveform)`` or a failure record, and stats."""

    clip: tuple[ClipInfo, np.ndarray] | None = None
    failure: dict[str, str] | None = None
    file_read: bool = False
    padded: bool = False
    silent: bool = False
    audio_ms: int = 0


def decode_entry(entry: ClipEntry) -> DecodeOutcome:
    """Open a clip through Beam FileSystems (local, gs://, ...) and decode it to 32 kHz mono float32.

    Thread-safe and never raises: any problem becomes a failure record (``missing_file``,
    ``read_error``, a DecodeError reason or ``internal_error``).
    """
    try:
        handle = FileSystems.open(entry.uri, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as exc:  # noqa: BLE001 - any open problem becomes a failure record
        if _is_missing(entry.uri, exc):
            msg = f"{entry.uri}: no such file"
            rec = failure_record(entry.audio_id, entry.uri, "read", "missing_file", msg)
        else:
            msg = f"{entry.uri}: {type(exc).__name__}: {exc}"
            rec = failure_record(entry.audio_id, entry.uri, "read", "read_error", msg)
        return DecodeOutcome(failure=rec)
    try:
        with handle:
            decoded = decode_audio(handle, name=entry.uri)
        wave, padded = pad_to_minimum(decoded.waveform)
    except DecodeError as exc:
        rec = failure_record(entry.audio_id, entry.uri, "decode", exc.reason, str(exc))
        return DecodeOutcome(failure=rec, file_read=True)
    except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the other clips
        msg = f"{entry.uri}: {type(exc).__name__}: {exc}"
        rec = failure_record(entry.audio_id, entry.uri, "decode", "internal_error", msg)
        return DecodeOutcome(failure=rec, file_read=True)
    info = ClipInfo(
        audio_id=entry.audio_id,
        uri=entry.uri,
        split=entry.split,
        duration_s=float(decoded.duration_s),
        source_sample_rate=int(decoded.source_sample_rate),
        source_channels=int(decoded.source_channels),
        n_samples=len(wave),
        n_windows=0,
    )
    return DecodeOutcome(
        clip=(info, wave),
        file_read=True,
        padded=padded,
        silent=is_silent(decoded.waveform),
        audio_ms=int(round(decoded.duration_s * 1000)),
    )


def default_decode_threads() -> int:
    """Decoder threads when --decode_threads is 0: the worker's CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def default_decode_ahead(threads: int, batch_size: int) -> int:
    """Files decoded ahead when --decode_ahead is 0: enough for the next batch, and every thread busy."""
    return max(2 * threads, batch_size, 1)


class DecodeFn(beam.DoFn):
    """Decodes clips to 32 kHz mono float32 on background threads, ``ahead`` files ahead of its output.

    Each entry is queued on an :class:`~atr_core.runtime.idle_pool.IdlePriorityPool` of ``threads``
    threads as it arrives; a clip is emitted once ``ahead`` newer entries are queued behind it (or
    at the end of the bundle), so the next files decode while the model runs on the current batch.
    The decode threads run at idle priority where Linux allows it: they take the cycles a CPU
    forward leaves free and do not slow it down, and they are raised to normal priority whenever
    this DoFn has to wait for them. libsndfile, soxr and numpy release the GIL. At most ``ahead``
    decoded clips are held. The file is decoded in blocks straight from the open handle, so a long
    file is never held as bytes. Every output keeps its input's timestamp and window. Main output:
    ``(ClipInfo, waveform)`` with the waveform padded to the model minimum. Tagged ``failed``:
    failure records (see :func:`decode_entry`).
    """

    def __init__(self, threads: int = 0, ahead: int = 0, batch_size: int = 1, idle_priority: bool = True):
        self._threads = threads
        self._ahead_arg = ahead
        self._batch_size = batch_size
        self._idle_priority = idle_priority

    def setup(self) -> None:
        self._files_read = _counter("files_read")
        self._audio_ms = _counter("audio_milliseconds")
        self._padded = _counter("clips_padded")
        self._silent = _counter("clips_silent")
        threads = self._threads if self._threads > 0 else default_decode_threads()
        self._ahead = self._ahead_arg or default_decode_ahead(threads, self._batch_size)
        self._pool = IdlePriorityPool(threads, name="atr-decode", idle=self._idle_priority)

    def start_bundle(self) -> None:
        self._queued: collections.deque[tuple[Future, Any, Any]] = collections.deque()

    def process(
        self, entry: ClipEntry, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
    ) -> Iterator[Any]:
        self._queued.append((self._pool.submit(decode_entry, entry), timestamp, window))
        while len(self._queued) > self._ahead:
            yield from self._emit(*self._queued.popleft())

    def finish_bundle(self) -> Iterator[Any]:
        while self._queued:
            yield from self._emit(*self._queued.popleft())

    def teardown(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)

    def _emit(self, future: Future, timestamp: Any, window: Any) -> Iterator[Any]:
        out = self._pool.result(future)
        # counters are thread-local in Beam: update them here, in the bundle's thread
        if out.file_read:
            self._files_read.inc()
        if out.failure is not None:
            yield beam.pvalue.TaggedOutput(FAILED, WindowedValue(out.failure, timestamp, [window]))
            return
        self._audio_ms.inc(out.audio_ms)
        if out.silent:
            self._silent.inc()
        if out.padded:
            self._padded.inc()
        yield WindowedValue(out.clip, timestamp, [window])


class WindowFn(beam.DoFn):
    """Splits a clip into the overlapping windows of ``plan_windows`` (one window for short clips)."""

    def __init__(self, max_window_samples: int):
        self._max = max_window_samples

    def setup(self) -> None:
        self._windows = _counter("windows")
        self._multi = _counter("clips_multi_window")

    def process(self, item: tuple[ClipInfo, np.ndarray]) -> Iterator[tuple[WindowKey, np.ndarray]]:
        info, wave = item
        plan = plan_windows(len(wave), self._max)
        info = info._replace(n_windows=len(plan))
        self._windows.inc(len(plan))
        if len(plan) > 1:
            self._multi.inc()
        for w in plan:
            yield WindowKey(info, w), wave[w.start : w.end]


class BatchWindowsFn(beam.DoFn):
    """Length-aware batching with bounded memory.

    Windows are buffered per length; a length bucket is emitted when it holds ``batch_size`` windows
    or ``max_samples`` samples. When everything buffered reaches either limit, all buffers go out as
    one batch (the model groups equal lengths inside it). So at most about one batch is buffered.
    """

    def __init__(self, batch_size: int, max_samples: int):
        self._batch_size = max(1, batch_size)
        self._max_samples = max(1, max_samples)

    def start_bundle(self) -> None:
        self._buckets: dict[int, list[tuple[WindowKey, np.ndarray]]] = {}
        self._count = 0
        self._samples = 0

    def _flush(self, lengths: Iterable[int]) -> list[tuple[WindowKey, np.ndarray]]:
        batch = []
        for n in sorted(lengths):
            items = self._buckets.pop(n, [])
            batch.extend(items)
            self._count -= len(items)
            self._samples -= n * len(items)
        return batch

    def process(self, item: tuple[WindowKey, np.ndarray]) -> Iterator[list[tuple[WindowKey, np.ndarray]]]:
        n = len(item[1])
        bucket = self._buckets.get(n, [])
        if bucket and (len(bucket) >= self._batch_size or (len(bucket) + 1) * n > self._max_samples):
            yield self._flush([n])
        elif self._count and (self._count >= self._batch_size or self._samples + n > self._max_samples):
            yield self._flush(list(self._buckets))
        self._buckets.setdefault(n, []).append(item)
        self._count += 1
        self._samples += n

    def finish_bundle(self) -> Iterator[Any]:
        if self._count:
            yield beam_window.GlobalWindows.windowed_value_at_end_of_window(self._flush(list(self._buckets)))


class SegmentModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """RunInference handler: waveform windows -> (T, D) segment features, loaded once per worker.

    The model comes from ``atr_core.audio.features.build_feature_model``; CNN14 weights are re-fetched
    on a worker that lacks the launcher's local copy and checked against its sha256.
    ``forward_exact_batch`` stacks only equal-length inputs, so a clip's features do not depend on
    its batch. A failing batch is retried window by window; a window that still fails yields an
    :class:`InferenceFailure` instead of features.
    """

    def __init__(
        self,
        feature: str,
        checkpoint: CheckpointInfo | None,
        device: str = "auto",
        dtype: str = "float16",
        channels_last: bool = True,
        compile: bool = False,
        num_threads: int = 0,
        max_batch_samples: int = DEFAULT_MAX_BATCH_SAMPLES,
        retain_memory: bool = True,
    ):
        super().__init__()
        self._feature = feature
        self._checkpoint = checkpoint
        self._device = device
        self._dtype = np.float16 if dtype == "float16" else np.float32
        self._channels_last = channels_last
        self._compile = compile
        self._num_threads = num_threads
        self._max_batch_samples = max_batch_samples
        self._retain_memory = retain_memory

    def load_model(self) -> Any:
        import torch

        if self._num_threads > 0:
            torch.set_num_threads(self._num_threads)
        model = features.build_feature_model(self._feature, self._checkpoint, self._device)
        if self._retain_memory and model_device(model).type == "cpu":
            retain_freed_memory()  # no page faults on every batch (atr_core.runtime.cpu_memory)
        return features.prepare_for_inference(model, channels_last=self._channels_last, compile=self._compile)

    def _forward(self, waves: Sequence[np.ndarray], model: Any) -> list[np.ndarray]:
        outs = forward_exact_batch(model, list(waves), self._max_batch_samples)
        return [o.astype(self._dtype, copy=False) for o in outs]

    def run_inference(
        self, batch: Sequence[np.ndarray], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        try:
            outs: list[Any] = self._forward(batch, model)
        except Exception:  # noqa: BLE001 - retry one by one so one bad window fails alone
            _empty_cuda_cache()
            outs = []
            for wave in batch:
                try:
                    outs.extend(self._forward([wave], model))
                except Exception as exc:  # noqa: BLE001
                    outs.append(InferenceFailure("inference_error", f"{type(exc).__name__}: {exc}"))
        return [PredictionResult(None, o) for o in outs]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return int(sum(np.asarray(w).nbytes for w in batch))

    def get_metrics_namespace(self) -> str:
        return NS + ".inference"  # RunInference's own metrics; kept apart from the job's counters


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


def dlq_to_results(bad: tuple[Any, tuple[Any, str, Any]]) -> Iterator[tuple[WindowKey, PredictionResult]]:
    """RunInference dead letters ``(batch, (type, repr, traceback))`` -> one failed result per window."""
    batch, (exc_type, exc_repr, _) = bad
    name = getattr(exc_type, "__name__", str(exc_type))
    for key, _wave in batch:
        yield key, PredictionResult(None, InferenceFailure("inference_error", f"{name}: {exc_repr}"))


class StitchFn(beam.DoFn):
    """(ClipInfo, [(Window, features | failure)]) -> (ClipInfo, (T, D) features), or a failure record."""

    def __init__(self, feature: str):
        self._feature = feature

    def process(self, item: tuple[ClipInfo, list[tuple[Window, Any]]]) -> Iterator[Any]:
        info, parts = item
        bad = [p for _, p in parts if isinstance(p, InferenceFailure)]
        if bad:
            yield failed(info.audio_id, info.uri, "inference", bad[0].error_type, bad[0].message)
            return
        if len(parts) != info.n_windows:
            msg = f"{info.audio_id}: got {len(parts)} of {info.n_windows} windows back from inference"
            yield failed(info.audio_id, info.uri, "stitch", "missing_windows", msg)
            return
        parts = sorted(parts, key=lambda p: p[0].index)
        try:
            feats = stitch(features.num_segments(self._feature, info.n_samples), parts)
        except Exception as exc:  # noqa: BLE001 - a stitching bug fails this clip only
            msg = f"{info.audio_id}: {type(exc).__name__}: {exc}"
            yield failed(info.audio_id, info.uri, "stitch", "internal_error", msg)
            return
        yield info, feats


def _collect_parts(
    kv: tuple[str, Iterable[tuple[WindowKey, Any]]],
) -> tuple[ClipInfo, list[tuple[Window, Any]]]:
    """Grouped windows of one clip -> (ClipInfo, [(Window, features | failure)])."""
    items = list(kv[1])  # GroupByKey values are a (possibly lazy) iterable: no indexing
    return items[0][0].clip, [(key.window, inference) for key, inference in items]


def _by_window_count(kv: tuple[WindowKey, Any], _n: int) -> int:
    return 0 if kv[0].clip.n_windows == 1 else 1


def _as_parts(kv: tuple[WindowKey, PredictionResult]) -> tuple[ClipInfo, list[tuple[Window, Any]]]:
    return kv[0].clip, [(kv[0].window, kv[1].inference)]


class Stitch(beam.PTransform):
    """(inference results, dead-lettered results) -> (single-window clips, multi-window clips, failures).

    Single-window clips (every clip up to ``--max_window_s``) are finished where inference ran,
    fused with it; only the windows of long clips are regrouped by ``audio_id`` (a shuffle). The
    two kinds of clips come out as two PCollections on purpose: merging them with a Flatten would
    make the local FnApiRunner hold every clip's features in memory until the whole corpus had
    been through the model (it materialises every multi-input Flatten).
    """

    def __init__(self, feature: str):
        super().__init__()
        self._feature = feature

    def expand(self, pcolls):
        results, dead = pcolls
        single, multi = results | "SplitByWindows" >> beam.Partition(_by_window_count, 2)
        dead_single, dead_multi = dead | "SplitDeadByWindows" >> beam.Partition(_by_window_count, 2)
        single_clips, single_failures = (
            single
            | "AsParts" >> beam.Map(_as_parts)
            | "StitchSingle" >> beam.ParDo(StitchFn(self._feature)).with_outputs(FAILED, main="clips")
        )
        _, dead_failures = (  # all failures: a dead-lettered window has no features
            dead_single
            | "DeadAsParts" >> beam.Map(_as_parts)
            | "StitchDead" >> beam.ParDo(StitchFn(self._feature)).with_outputs(FAILED, main="clips")
        )
        multi_clips, multi_failures = (
            (multi, dead_multi)
            | "MergeWindows" >> beam.Flatten()
            | "KeyByAudioId" >> beam.Map(lambda kv: (kv[0].clip.audio_id, (kv[0], kv[1].inference)))
            | "GroupWindows" >> beam.GroupByKey()
            | "CollectParts" >> beam.Map(_collect_parts)
            | "StitchMulti" >> beam.ParDo(StitchFn(self._feature)).with_outputs(FAILED, main="clips")
        )
        failures = (single_failures, dead_failures, multi_failures) | "MergeStitchFailures" >> beam.Flatten()
        return single_clips, multi_clips, failures


class WriteSegments(beam.PTransform):
    """(ClipInfo, features) -> shard rows -> Arrow tables of ``rows_per_group`` rows -> Parquet shards."""

    def __init__(
        self,
        identity: shards.ShardIdentity,
        prefix: str,
        rows_per_group: int,
        num_shards: int,
        skip_if_empty: bool,
    ):
        super().__init__()
        self._identity = identity
        self._prefix = prefix
        self._rows = rows_per_group
        self._num_shards = num_shards
        self._skip_if_empty = skip_if_empty

    def expand(self, clips):
        schema = shards.segment_schema(self._identity)
        return (
            clips
            | "ToRows" >> beam.ParDo(ToRowFn(self._identity))
            | "BatchRows" >> beam.BatchElements(min_batch_size=self._rows, max_batch_size=self._rows)
            | "ToTables" >> beam.Map(shards.rows_to_table, schema)
            | "Write"
            >> WriteParquetTables(
                self._prefix,
                schema,
                codec="zstd",
                num_shards=self._num_shards,
                shard_name_template=SHARD_TEMPLATE,
                file_name_suffix=".parquet",
                skip_if_empty=self._skip_if_empty,
            )
        )


class ToRowFn(beam.DoFn):
    """(ClipInfo, features) -> a shard row dict (atr_core.formats.shards schema)."""

    def __init__(self, identity: shards.ShardIdentity):
        self._ident = identity

    def setup(self) -> None:
        self._ok = _counter("clips_ok")

    def process(self, item: tuple[ClipInfo, np.ndarray]) -> Iterator[dict[str, Any]]:
        info, feats = item
        self._ok.inc()
        yield {
            "audio_id": info.audio_id,
            "uri": info.uri,
            "split": info.split,
            "duration_s": info.duration_s,
            "source_sample_rate": info.source_sample_rate,
            "source_channels": info.source_channels,
            "num_segments": int(feats.shape[0]),
            "feature": self._ident.feature,
            "checkpoint_sha256": self._ident.checkpoint_sha256,
            "package_version": self._ident.package_version,
            "embedding": feats,
        }


class CountFailuresFn(beam.DoFn):
    """Counts failure records (total and per error_type) and renders them as JSON lines."""

    def process(self, record: dict[str, str]) -> Iterator[str]:
        _counter("clips_failed").inc()
        _counter(f"failed_{record['error_type']}").inc()
        yield json.dumps(record, ensure_ascii=False)


# ------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """Everything decided before the pipeline is built (all validation happens here)."""

    opts: ExtractOptions
    output: str
    run_id: str
    identity: shards.ShardIdentity
    checkpoint: CheckpointInfo | None
    entries: list[ClipEntry] | None  # None for --input globs (matched on the workers)
    input_glob: str | None
    duplicate_positions: frozenset[int]
    existing_ids: frozenset[str]

    @property
    def name_tag(self) -> str:
        """Infix of output file names: empty, or ``-<run_id>`` for --incremental runs."""
        return f"-{self.run_id}" if self.opts.incremental else ""


def _default_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _norm_path(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _resolve_checkpoint(opts: ExtractOptions) -> CheckpointInfo | None:
    """The validated CNN14 checkpoint (fetched and sha256-checked here), or None for weightless features."""
    features.check_feature(opts.features)
    if opts.features != "cnn14":
        return None
    return features.resolve_checkpoint(opts.cnn14_checkpoint, sha256=opts.cnn14_sha256)


def max_window_samples(opts: ExtractOptions) -> int:
    """--max_window_s in samples at 32 kHz."""
    return max(1, int(round(opts.max_window_s * TARGET_SR)))


def _check_numbers(opts: ExtractOptions) -> None:
    for name in ("batch_size", "rows_per_row_group"):
        if getattr(opts, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(opts, name)}")
    for name in ("max_window_s", "max_batch_audio_s"):
        if not getattr(opts, name) > 0:
            raise InputError(f"--{name} must be > 0, got {getattr(opts, name)}")
    try:  # a window too small for its context is refused by the planner itself
        plan_windows(max_window_samples(opts) + 1, max_window_samples(opts))
    except InputError as exc:
        raise InputError(f"--max_window_s {opts.max_window_s:g}: {exc}") from None
    if opts.decode_threads < 0:
        raise InputError(f"--decode_threads must be >= 0 (0 = the CPU count), got {opts.decode_threads}")
    if opts.decode_ahead < 0:
        raise InputError(f"--decode_ahead must be >= 0 (0 = automatic), got {opts.decode_ahead}")
    if opts.num_shards < 0:
        raise InputError(f"--num_shards must be >= 0, got {opts.num_shards}")


def _existing_segment_shards(output: str) -> list[str]:
    try:
        return expand_glob(f"{output}/segments*.parquet")
    except FileNotFoundError:
        return []


def _check_incremental_identity(old: list[str], identity: shards.ShardIdentity) -> None:
    """Existing shards must have been written with the same feature, dimension, dtype and weights."""
    for path in old:
        ident = shards.read_identity(path)
        for attr in ("feature", "embedding_dim", "dtype", "checkpoint_sha256"):
            if getattr(ident, attr) != getattr(identity, attr):
                raise ConfigMismatchError(
                    f"--incremental: {path} has {attr}={getattr(ident, attr)!r} but this run has "
                    f"{attr}={getattr(identity, attr)!r}; write to another --output"
                )


def _check_glob(pattern: str) -> None:
    try:
        found = FileSystems.match([pattern], limits=[1])[0].metadata_list
    except Exception as exc:  # noqa: BLE001 - Beam raises BeamIOError and friends
        raise InputError(f"--input {pattern}: cannot list files: {exc}") from None
    if not found:
        raise InputError(f"--input {pattern}: matches no files")


def plan_run(opts: ExtractOptions) -> Plan:
    """Validate options, checkpoint, inputs and output before anything runs or is written."""
    if bool(opts.input) == bool(opts.captions):
        raise InputError("give exactly one of --input (audio glob) or --captions (manifest file)")
    if not opts.output:
        raise InputError("--output is required (a directory, local or gs://)")
    _check_numbers(opts)
    checkpoint = _resolve_checkpoint(opts)  # first: a missing checkpoint fails before anything else
    identity = features.feature_identity(opts.features, checkpoint, dtype=opts.dtype)
    output = _norm_path(opts.output).rstrip("/")
    entries, input_glob, dups = None, None, frozenset()
    if opts.captions:
        entries = manifest.read_manifest(
            opts.captions,
            audio_root=opts.audio_root,
            fmt=opts.captions_format,
            audio_pattern=opts.audio_pattern,
            split=opts.split,
        )
        _, dup_entries = manifest.split_duplicates(entries)
        dup_ids = {id(e) for e in dup_entries}
        dups = frozenset(i for i, e in enumerate(entries) if id(e) in dup_ids)
    else:
        input_glob = _norm_path(opts.input)
        if opts.split:
            manifest.infer_split(explicit=opts.split)  # validate early
        _check_glob(input_glob)
    existing: frozenset[str] = frozenset()
    old = _existing_segment_shards(output)
    if old and not opts.incremental:
        raise OutputExistsError(
            f"{output}: already holds {len(old)} segment shard(s) (e.g. {old[0]}); use --incremental to add "
            "new clips to it, or choose another --output"
        )
    if old:
        _check_incremental_identity(old, identity)
        existing = frozenset(shards.read_audio_ids(f"{output}/segments*.parquet"))
    return Plan(
        opts=opts,
        output=output,
        run_id=opts.run_id or _default_run_id(),
        identity=identity,
        checkpoint=checkpoint,
        entries=entries,
        input_glob=input_glob,
        duplicate_positions=dups,
        existing_ids=existing,
    )


# ------------------------------------------------------------------------------------------- pipeline


def read_inputs(p: beam.Pipeline, plan: Plan):
    """ReadInputs: ``(position, ClipEntry)`` from the manifest (Create) or the glob (MatchFiles)."""
    if plan.entries is not None:
        entries = [dataclasses.replace(e, captions=()) for e in plan.entries]  # captions are not needed
        return p | "ReadInputs" >> beam.Create(list(enumerate(entries)), reshuffle=False)
    root = manifest.glob_root(plan.input_glob)
    split = manifest.glob_split(root, plan.opts.split)
    return (
        p
        | "ReadInputs" >> fileio.MatchFiles(plan.input_glob)
        | "ToEntries" >> beam.Map(lambda m: (-1, manifest.entry_for_path(m.path, root, split)))
    )


def build_pipeline(p: beam.Pipeline, plan: Plan) -> None:
    """Apply every transform of the extraction job to ``p``."""
    o = plan.opts
    entries, dup_failures = read_inputs(p, plan) | "Dedupe" >> beam.ParDo(
        FilterInputs(plan.duplicate_positions, plan.existing_ids)
    ).with_outputs(FAILED, main="ok")
    decode = DecodeFn(o.decode_threads, o.decode_ahead, o.batch_size, o.idle_decode)
    clips, decode_failures = entries | "Decode" >> beam.ParDo(decode).with_outputs(FAILED, main="clips")
    max_batch_samples = max(1, int(o.max_batch_audio_s * TARGET_SR))
    handler = KeyedModelHandler(
        SegmentModelHandler(
            feature=o.features,
            checkpoint=plan.checkpoint,
            device=o.device,
            dtype=o.dtype,
            channels_last=o.channels_last,
            compile=o.compile,
            num_threads=o.num_threads,
            max_batch_samples=max_batch_samples,
            retain_memory=o.retain_memory,
        )
    ).with_no_batching()
    results, dlq = (
        clips
        | "Window" >> beam.ParDo(WindowFn(max_window_samples(o)))
        | "Batch" >> beam.ParDo(BatchWindowsFn(o.batch_size, max_batch_samples))
        | "RunInference" >> RunInference(handler).with_exception_handling()
    )
    dlq_results = dlq.failed_inferences | "FailedBatches" >> beam.FlatMap(dlq_to_results)
    single_clips, multi_clips, stitch_failures = (results, dlq_results) | "Stitch" >> Stitch(o.features)
    prefix = f"{plan.output}/segments{plan.name_tag}"
    write = functools.partial(
        WriteSegments, plan.identity, rows_per_group=o.rows_per_row_group, num_shards=o.num_shards
    )
    _ = single_clips | "WriteShards" >> write(prefix, skip_if_empty=False)
    # clips longer than --max_window_s: their own shard set, written only when there are any
    _ = multi_clips | "WriteLongClipShards" >> write(f"{prefix}-long", skip_if_empty=True)
    _ = (
        (dup_failures, decode_failures, stitch_failures)
        | "MergeFailures" >> beam.Flatten()
        | "CountFailures" >> beam.ParDo(CountFailuresFn())
        | "WriteFailures"
        >> beam.io.WriteToText(
            f"{plan.output}/failures{plan.name_tag}",
            file_name_suffix=".jsonl",
            num_shards=1,
            shard_name_template=SHARD_TEMPLATE,
        )
    )


# -------------------------------------------------------------------------------------------- summary


def make_summary(plan: Plan, counters: dict[str, int], state: str) -> dict[str, Any]:
    """The run summary: counts from the metrics and whether they balance."""
    g = lambda k: counters.get(k, 0)  # noqa: E731
    failed_by = {k[len("failed_") :]: v for k, v in sorted(counters.items()) if k.startswith("failed_") and v}
    return {
        "run_id": plan.run_id,
        "state": state,
        "output": plan.output,
        "incremental": bool(plan.opts.incremental),
        "feature": plan.identity.feature,
        "dtype": plan.identity.dtype,
        "checkpoint": plan.identity.checkpoint,
        "checkpoint_sha256": plan.identity.checkpoint_sha256,
        "package_version": __version__,
        "inputs": g("inputs"),
        "clips_ok": g("clips_ok"),
        "clips_failed": g("clips_failed"),
        "skipped_existing": g("skipped_existing"),
        "failed_by_reason": failed_by,
        "duplicates": g("duplicates"),
        "files_read": g("files_read"),
        "audio_seconds": g("audio_milliseconds") / 1000.0,
        "clips_padded": g("clips_padded"),
        "clips_silent": g("clips_silent"),
        "clips_multi_window": g("clips_multi_window"),
        "windows": g("windows"),
        "balanced": g("inputs") == g("clips_ok") + g("clips_failed") + g("skipped_existing"),
    }


def format_summary(s: dict[str, Any]) -> str:
    """One human-readable paragraph of the summary."""
    reasons = ", ".join(f"{k}={v}" for k, v in s["failed_by_reason"].items()) or "none"
    return (
        f"extract run {s['run_id']} ({s['state']}): inputs {s['inputs']} = ok {s['clips_ok']} "
        f"+ failed {s['clips_failed']} "
        f"+ skipped_existing {s['skipped_existing']} [{'balanced' if s['balanced'] else 'NOT BALANCED'}]\n"
        f"  failed by reason: {reasons}\n"
        f"  files read {s['files_read']}, audio {s['audio_seconds']:.1f} s, padded {s['clips_padded']}, "
        f"silent {s['clips_silent']}, multi-window clips {s['clips_multi_window']} ({s['windows']} windows)\n"
        f"  output: {s['output']}"
    )


def write_summary(plan: Plan, summary: dict[str, Any]) -> str:
    """Write ``summary-<run>.json`` into the output directory; return its path."""
    return write_json(f"{plan.output}/summary-{plan.run_id}.json", summary)


# ---------------------------------------------------------------------------------------------- entry


def run(
    argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None, wait: bool = True
) -> PipelineResult:
    """Build and run the extraction pipeline; print and write the summary.

    Args:
        argv: command-line flags (ExtractOptions plus any Beam pipeline options).
        test_pipeline: a pipeline to use instead of creating one (tests).
        wait: wait for the job and write the summary; False submits and returns (Flex Template launch).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    build_parser().parse_known_args(argv)  # --help, and argparse-level errors, before any work
    options = PipelineOptions(argv)
    plan = plan_run(options.view_as(ExtractOptions))
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
        LOG.error(
            "counts do not balance: inputs != clips_ok + clips_failed + skipped_existing (see %s)", path
        )
    return result


def main(argv: Sequence[str] | None = None) -> PipelineResult:
    """Entry point with the local default runner (FnApiRunner) unless --runner is given."""
    return run(with_default_runner(argv))


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: DoFns and element classes must pickle
    # by their real module name (pipelines.extract) for other processes and Dataflow workers.
    from pipelines import extract as _module

    exit_process(run_cli(_module.main, "extract"))
