"""Beam pipeline: trained model(s) -> retrieval vectors, corpus-scale metrics and an evaluation report.

    python -m pipelines.embed --segments 'shards/*.parquet' \\
        --captions clotho_captions_evaluation.csv --model runs/seed0 --output vectors/

Outputs: ``<output>/<model>/<split>/audio-SSSSS-of-NNNNN.parquet`` and ``captions-*.parquet``
(atr_core.formats.vectors schema), ``metrics.json`` + ``report.md``/``report.html`` + PNGs
(atr_core.evaluation.report) next to them, and ``<output>/summary-embed.json``. The model directory is checked
against the shards (feature, dimension, CNN14 checkpoint) and the word vectors before any work.
See docs/embed.md.

Modules: :mod:`.options` (flags), :mod:`.plan` (checks before any work), :mod:`.files` (shards and
captions in, vector files out), :mod:`.encoders` (the RunInference handlers), :mod:`.ranking`
(exact distributed metrics), :mod:`.report`, :mod:`.summary`, :mod:`.pipeline` (the graph,
:func:`run`, :func:`main`); :mod:`.records` holds the element types and names they share.
"""

import logging

from pipelines.embed.encoders import AudioEncoderHandler, EncoderHandler, TextEncoderHandler, ToVectors
from pipelines.embed.files import ReadCaptions, SelectClips, WriteVectors, vectors_to_table
from pipelines.embed.options import EmbedOptions, build_parser
from pipelines.embed.pipeline import JOB, build_pipeline, main, run
from pipelines.embed.plan import (
    EmbedPlan,
    ModelPlan,
    caption_files,
    existing_outputs,
    plan_run,
    read_captions,
)
from pipelines.embed.ranking import (
    CaptionBlock,
    CombineScored,
    MakeBlocks,
    MergeOwnScores,
    a2t_window,
    own_scores,
    rank_split,
    score_block,
    split_metrics,
)
from pipelines.embed.records import FAILED, MISSING, NS, SUMMARY_FILE, CaptionRecord, Vector
from pipelines.embed.report import WriteAggregate, WriteSplitReport, run_metadata
from pipelines.embed.summary import format_summary, make_summary, write_summary

LOG = logging.getLogger(__name__)

__all__ = [
    "FAILED",
    "JOB",
    "MISSING",
    "NS",
    "SUMMARY_FILE",
    "AudioEncoderHandler",
    "CaptionBlock",
    "CaptionRecord",
    "CombineScored",
    "EmbedOptions",
    "EmbedPlan",
    "EncoderHandler",
    "MakeBlocks",
    "MergeOwnScores",
    "ModelPlan",
    "ReadCaptions",
    "SelectClips",
    "TextEncoderHandler",
    "ToVectors",
    "Vector",
    "WriteAggregate",
    "WriteSplitReport",
    "WriteVectors",
    "a2t_window",
    "build_parser",
    "build_pipeline",
    "caption_files",
    "existing_outputs",
    "format_summary",
    "main",
    "make_summary",
    "own_scores",
    "plan_run",
    "rank_split",
    "read_captions",
    "run",
    "run_metadata",
    "score_block",
    "split_metrics",
    "vectors_to_table",
    "write_summary",
]
