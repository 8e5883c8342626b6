"""The extraction run's summary: counts from the Beam metrics, whether they balance, where it is written."""

from __future__ import annotations

from typing import Any

from atr_core import __version__
from pipelines.common import write_json
from pipelines.extract.plan import Plan


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
