"""Evaluation: retrieval metrics (R@K, median and mean rank), chance levels and the report.

:mod:`.metrics` computes exact metrics, also blockwise at corpus scale, :mod:`.chance` what a
random ranking scores, :mod:`.report` writes metrics.json, report.md and report.html.
"""

from atr_core.evaluation.chance import chance_levels
from atr_core.evaluation.metrics import (
    RECALL_KS,
    aggregate_runs,
    blocked_retrieval_metrics,
    retrieval_metrics,
    similarities,
)
from atr_core.evaluation.report import write_report

__all__ = [
    "RECALL_KS",
    "aggregate_runs",
    "blocked_retrieval_metrics",
    "chance_levels",
    "retrieval_metrics",
    "similarities",
    "write_report",
]
