"""Reports: one per (model, split) in ``<output>/<model>/<split>/``, and with several models the
mean +- std over them in ``<output>/<split>/`` (``atr_core.evaluation.report`` writes both)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from atr_core import __version__
from atr_core.evaluation import metrics
from atr_core.evaluation.ranking import AudioIndex
from atr_core.runtime.storage import join_uri
from pipelines.embed.plan import EmbedPlan, ModelPlan
from pipelines.embed.records import Vector

LOG = logging.getLogger(__name__)


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
        metadata = {
            "split": split,
            "model": f"mean ± std of {len(runs)} models ({', '.join(r['model'] for r in runs)})",
            "models": [r["metadata"]["model"] for r in runs],
            "features": dict(self._plan.shard_identity),
            "counts": {r["model"]: r["metadata"]["counts"] for r in runs},
            "missing": runs[0]["metadata"]["missing"],
            "package_version": __version__,
        }
        mean = metrics.aggregate_runs([r["metrics"] for r in runs], stat="mean")
        report.write_report(
            join_uri(self._plan.output, split),
            mean,
            ranks={},
            examples={},
            metadata=metadata,
            runs=[r["metrics"] for r in runs],
        )
        yield split
