"""The embed job's graph (:func:`build_pipeline`) and its entry points (:func:`run`, :func:`main`).

Data flow (named transforms, per model ``M`` and split ``S``)::

    ShardFiles -> ReadShards -> SelectClips -> PrepareAudio[M] -> EmbedAudio[M] -> AudioVectors[M]
    CaptionFiles -> ReadCaptions -> KeyCaptions[M] -> EmbedCaptions[M] -> CaptionVectors[M]   (RunInference)
    SplitAudio[M] / SplitCaptions[M] -> WriteAudio[M,S] / WriteCaptions[M,S]
    ranking: CollectAudio -> AudioIndex (side input); BlockCaptions -> MakeBlocks -> OwnScores
             -> MergeOwnScores -> Window (side input); ScoreBlocks -> MergeCounts -> Metrics -> Report[M,S]
    several --model: AllReports -> GroupBySplit -> Aggregate (mean +- std) -> <output>/<S>/
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.runners.runner import PipelineResult

from atr_core.formats import vectors
from atr_core.search.searcher import prepare_segments
from pipelines.common import BeamJob, run_job, with_default_runner
from pipelines.embed.encoders import AudioEncoderHandler, TextEncoderHandler, ToVectors
from pipelines.embed.files import ReadCaptions, SelectClips, WriteVectors
from pipelines.embed.options import EmbedOptions, build_parser
from pipelines.embed.plan import EmbedPlan, plan_run
from pipelines.embed.ranking import rank_split
from pipelines.embed.records import FAILED, NS
from pipelines.embed.report import WriteAggregate
from pipelines.embed.summary import format_summary, make_summary, write_summary

LOG = logging.getLogger(__name__)


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


#: name, counters namespace, options, parser, plan, graph, summary (make, write, print)
JOB = BeamJob(
    "embed", NS, EmbedOptions, build_parser, plan_run, build_pipeline, make_summary, write_summary,
    format_summary, unbalanced="counts do not balance",
)


def run(
    argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None, wait: bool = True
) -> PipelineResult:
    """Build and run the embedding pipeline; print and write the summary (:func:`run_job`).

    ``argv`` holds EmbedOptions and any Beam pipeline options; ``test_pipeline`` replaces the
    pipeline (tests); ``wait=False`` submits and returns (Flex Template launch).

    Raises:
        AtrError: bad options or inputs (:func:`plan_run`), before any pipeline work.
    """
    return run_job(JOB, argv, test_pipeline, wait)


def main(argv: Sequence[str] | None = None) -> PipelineResult:
    """Entry point with the local default runner (FnApiRunner) unless --runner is given."""
    return run(with_default_runner(argv))
