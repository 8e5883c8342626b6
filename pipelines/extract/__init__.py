"""Beam pipeline: audio files -> CNN14 (or log-mel) segment embeddings in Parquet shards.

    python -m pipelines.extract --input 'clips/*.wav' --output out/ --cnn14_checkpoint Cnn14_mAP=0.431.pth
    python -m pipelines.extract --captions clotho_captions_evaluation.csv --audio_root clotho/evaluation \\
        --output out/ --cnn14_checkpoint gs://bucket/Cnn14_mAP=0.431.pth

Data flow (named transforms): ReadInputs -> Dedupe -> Decode -> Window -> Batch -> RunInference ->
Stitch -> ToRows -> BatchRows -> WriteShards, plus WriteFailures for every input that did not become
a row. Every input ends as exactly one shard row or one failure record (or is skipped by
``--incremental``); the summary checks ``inputs = clips_ok + clips_failed + skipped_existing`` from
the Beam metrics. See docs/extract.md and docs/shards.md.

Modules: :mod:`.options` (flags), :mod:`.plan` (checks before any work), :mod:`.transforms` and
:mod:`.inference` (the DoFns), :mod:`.pipeline` (the graph, ``run``, ``main``), :mod:`.summary`.
The Beam-free parts live in atr_core: decoding an entry (:mod:`atr_core.audio.decode_outcome`),
the batching policy (:mod:`atr_core.audio.batching`), failure records
(:mod:`atr_core.formats.failures`).
"""

from apache_beam.options.pipeline_options import PipelineOptions

from atr_core.audio.decode_outcome import ClipInfo, DecodeOutcome
from atr_core.formats.failures import failure_record
from pipelines.extract.elements import FAILED, NS, SHARD_TEMPLATE, InferenceFailure, WindowKey
from pipelines.extract.inference import SegmentModelHandler, Stitch, StitchFn, dlq_to_results
from pipelines.extract.options import ExtractOptions, build_parser
from pipelines.extract.pipeline import JOB, build_pipeline, main, read_inputs, run
from pipelines.extract.plan import Plan, max_window_samples, plan_run
from pipelines.extract.summary import format_summary, make_summary, write_summary
from pipelines.extract.transforms import (
    BatchWindowsFn,
    CountFailuresFn,
    DecodeFn,
    FilterInputs,
    ToRowFn,
    WindowFn,
    WriteSegments,
    decode_entry,
    default_decode_ahead,
    default_decode_threads,
)

__all__ = [
    "FAILED",
    "JOB",
    "NS",
    "SHARD_TEMPLATE",
    "BatchWindowsFn",
    "ClipInfo",
    "CountFailuresFn",
    "DecodeFn",
    "DecodeOutcome",
    "ExtractOptions",
    "FilterInputs",
    "InferenceFailure",
    "PipelineOptions",
    "Plan",
    "SegmentModelHandler",
    "Stitch",
    "StitchFn",
    "ToRowFn",
    "WindowFn",
    "WindowKey",
    "WriteSegments",
    "build_parser",
    "build_pipeline",
    "decode_entry",
    "default_decode_ahead",
    "default_decode_threads",
    "dlq_to_results",
    "failure_record",
    "format_summary",
    "main",
    "make_summary",
    "max_window_samples",
    "plan_run",
    "read_inputs",
    "run",
    "write_summary",
]
