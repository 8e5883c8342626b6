"""Exact distributed ranking of one (model, split): caption blocks against the split's audio index.

The pieces of ``atr_core.evaluation.metrics`` run on Beam workers: captions are cut into blocks, the
:class:`AudioIndex` is a side input, pass 1 (own scores) and pass 2 (block scores) are merged with
``CombineGlobally``. The result equals the single-process metrics bit for bit (docs/metrics.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np

from atr_core.errors import InputError
from atr_core.evaluation import metrics
from atr_core.evaluation.ranking import AudioIndex
from pipelines.embed.plan import EmbedPlan, ModelPlan
from pipelines.embed.records import MISSING, Vector, counter
from pipelines.embed.report import WriteSplitReport

LOG = logging.getLogger(__name__)


class CaptionBlock(NamedTuple):
    """Captions of one ranking block: ids, clip indices into the AudioIndex, vectors."""

    ids: list[str]
    clip_index: np.ndarray
    vectors: np.ndarray


class MakeBlocks(beam.DoFn):
    """A batch of caption vectors -> a :class:`CaptionBlock`; captions whose clip has no vector go to
    the ``missing`` output (counted, reported)."""

    def setup(self) -> None:
        self._missing = counter("captions_without_audio_vector")
        self._blocks = counter("ranking_blocks")

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
    """Per-clip score windows from the merged pass-1 summary (None without any block)."""
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
