"""The extraction job's DoFns and PTransforms up to the model and after it (inference: :mod:`.inference`).

Dedupe (:class:`FilterInputs`) -> Decode (:class:`DecodeFn`) -> Window (:class:`WindowFn`) -> Batch
(:class:`BatchWindowsFn`) ... Stitch -> :class:`WriteSegments`, and :class:`CountFailuresFn` for the
failure records.
"""

from __future__ import annotations

import collections
import os
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from typing import IO, Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window as beam_window
from apache_beam.utils.windowed_value import WindowedValue

from atr_core.audio import decode_outcome
from atr_core.audio.batching import LengthBatcher
from atr_core.audio.decode_outcome import ClipInfo, DecodeOutcome
from atr_core.audio.windows import plan_windows
from atr_core.formats import shards
from atr_core.formats.failures import failure_line
from atr_core.formats.manifest import ClipEntry
from atr_core.runtime.idle_pool import IdlePriorityPool
from pipelines.extract.elements import FAILED, SHARD_TEMPLATE, WindowKey, counter, failed
from pipelines.parquet_sink import WriteParquetTables


class FilterInputs(beam.DoFn):
    """Counts inputs; drops ids already extracted (--incremental); turns duplicates into failures.

    The ids already in --output come as a side input (``existing``: audio_id -> True), read from the
    old shards on the workers, so the job graph does not grow with the corpus.
    """

    def __init__(self, duplicate_positions: frozenset[int]):
        self._dups = duplicate_positions

    def setup(self) -> None:
        self._inputs = counter("inputs")
        self._skipped = counter("skipped_existing")
        self._duplicates = counter("duplicates")

    def process(self, item: tuple[int, ClipEntry], existing: dict[str, bool]) -> Iterator[Any]:
        pos, entry = item
        self._inputs.inc()
        if entry.audio_id in existing:
            self._skipped.inc()
            return
        if pos in self._dups:
            self._duplicates.inc()
            msg = f"manifest entry #{pos + 1} repeats audio_id {entry.audio_id!r}; the first entry wins"
            yield failed(entry.audio_id, entry.uri, "manifest", "duplicate_audio_id", msg)
            return
        yield entry


def spread_key(entry: ClipEntry, keys: int = 4096) -> int:
    """A stable key in ``[0, keys)`` from the audio_id (same on every worker and every run)."""
    return zlib.crc32(entry.audio_id.encode("utf-8")) % keys


class SpreadClips(beam.PTransform):
    """A fusion break after reading the inputs, so decoding and inference spread over all workers.

    Without it Dataflow fuses read -> decode -> model into one stage behind the few elements of
    ``Create``/``MatchFiles``: one worker thread, whatever the worker count. Like ``beam.Reshuffle``
    (a GroupByKey), but keyed by a hash of the audio_id instead of a random key, so a local run
    gives the same shards byte for byte every time.
    """

    def expand(self, pcoll):
        return (
            pcoll
            | "KeyByClip" >> beam.Map(lambda e: (spread_key(e), e))
            | "GroupByKey" >> beam.GroupByKey()
            | "Ungroup" >> beam.FlatMap(lambda kv: kv[1])
        )


def _open(uri: str) -> IO[bytes]:
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def decode_entry(entry: ClipEntry) -> DecodeOutcome:
    """Open a clip through Beam FileSystems (local, gs://, ...) and decode it to 32 kHz mono float32.

    Thread-safe and never raises: any problem becomes a failure record (``missing_file``,
    ``read_error``, a DecodeError reason or ``internal_error``; see
    :func:`atr_core.audio.decode_outcome.decode_entry`).
    """
    return decode_outcome.decode_entry(entry, open_file=_open, exists=FileSystems.exists)


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
        self._files_read = counter("files_read")
        self._audio_ms = counter("audio_milliseconds")
        self._padded = counter("clips_padded")
        self._silent = counter("clips_silent")
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
        self._windows = counter("windows")
        self._multi = counter("clips_multi_window")

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
    """Length-aware batching with bounded memory (the policy: :class:`atr_core.audio.batching.LengthBatcher`).

    Windows are buffered per length; a length bucket is emitted when it holds ``batch_size`` windows
    or ``max_samples`` samples. When everything buffered reaches either limit, all buffers go out as
    one batch (the model groups equal lengths inside it). So at most about one batch is buffered.
    """

    def __init__(self, batch_size: int, max_samples: int):
        self._batch_size = max(1, batch_size)
        self._max_samples = max(1, max_samples)

    def start_bundle(self) -> None:
        self._batcher: LengthBatcher[tuple[WindowKey, np.ndarray]] = LengthBatcher(
            self._batch_size, self._max_samples
        )

    @property
    def _count(self) -> int:
        """Windows buffered now."""
        return self._batcher.count

    @property
    def _samples(self) -> int:
        """Samples buffered now."""
        return self._batcher.samples

    def process(self, item: tuple[WindowKey, np.ndarray]) -> Iterator[list[tuple[WindowKey, np.ndarray]]]:
        batch = self._batcher.add(item, len(item[1]))
        if batch is not None:
            yield batch

    def finish_bundle(self) -> Iterator[Any]:
        if self._batcher.count:
            yield beam_window.GlobalWindows.windowed_value_at_end_of_window(self._batcher.flush())


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
        self._ok = counter("clips_ok")

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
        counter("clips_failed").inc()
        counter(f"failed_{record['error_type']}").inc()
        yield failure_line(record)
