"""The extraction job's graph (:func:`build_pipeline`, read top to bottom) and its entry points."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.runners.runner import PipelineResult

from atr_core.audio.decode import TARGET_SR
from atr_core.formats import manifest, shards
from pipelines.common import BeamJob, run_job, with_default_runner
from pipelines.extract.elements import FAILED, NS, SHARD_TEMPLATE
from pipelines.extract.inference import SegmentModelHandler, Stitch, dlq_to_results
from pipelines.extract.options import ExtractOptions, build_parser
from pipelines.extract.plan import Plan, max_window_samples, plan_run
from pipelines.extract.summary import format_summary, make_summary, write_summary
from pipelines.extract.transforms import (
    BatchWindowsFn,
    CountFailuresFn,
    DecodeFn,
    FilterInputs,
    SpreadClips,
    WindowFn,
    WriteSegments,
)


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
    existing = (
        p
        | "ExistingShards" >> beam.Create(list(plan.existing_shards))
        | "ExistingIds" >> beam.FlatMap(lambda path: [(a, True) for a in shards.read_shard_audio_ids(path)])
    )
    entries, dup_failures = read_inputs(p, plan) | "Dedupe" >> beam.ParDo(
        FilterInputs(plan.duplicate_positions), existing=beam.pvalue.AsDict(existing)
    ).with_outputs(FAILED, main="ok")
    decode = DecodeFn(o.decode_threads, o.decode_ahead, o.batch_size, o.idle_decode)
    clips, decode_failures = (
        entries
        | "SpreadClips" >> SpreadClips()
        | "Decode" >> beam.ParDo(decode).with_outputs(FAILED, main="clips")
    )
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


#: name, counters namespace, options, parser, plan, graph, summary (make, write, print)
JOB = BeamJob(
    "extract", NS, ExtractOptions, build_parser, plan_run, build_pipeline, make_summary, write_summary,
    format_summary, unbalanced="counts do not balance: inputs != clips_ok + clips_failed + skipped_existing",
)


def run(
    argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None, wait: bool = True
) -> PipelineResult:
    """Build and run the extraction pipeline; print and write the summary (:func:`run_job`).

    ``argv`` holds ExtractOptions and any Beam pipeline options; ``test_pipeline`` replaces the
    pipeline (tests); ``wait=False`` submits and returns (Flex Template launch).

    Raises:
        AtrError: bad options, checkpoint, inputs or output (see :func:`plan_run`), before any work.
    """
    return run_job(JOB, argv, test_pipeline, wait)


def main(argv: Sequence[str] | None = None) -> PipelineResult:
    """Entry point with the local default runner (FnApiRunner) unless --runner is given."""
    return run(with_default_runner(argv))
