"""The extraction job's model step and what follows it: RunInference's handler, dead letters, stitching."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from atr_core.audio import features
from atr_core.audio.cnn14 import CheckpointInfo
from atr_core.audio.decode_outcome import ClipInfo
from atr_core.audio.windows import (
    DEFAULT_MAX_BATCH_SAMPLES,
    Window,
    forward_exact_batch,
    model_device,
    stitch,
)
from atr_core.runtime.cpu_memory import retain_freed_memory
from pipelines.extract.elements import FAILED, NS, InferenceFailure, WindowKey, failed


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
