"""The run summary ``<output>/summary-embed.json``: counts in = counts out + counts failed."""

from __future__ import annotations

import logging
from typing import Any

from atr_core.runtime.storage import join_uri
from pipelines.common import write_json
from pipelines.embed.plan import EmbedPlan
from pipelines.embed.records import SUMMARY_FILE

LOG = logging.getLogger(__name__)


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
    return write_json(join_uri(plan.output, SUMMARY_FILE), summary)
