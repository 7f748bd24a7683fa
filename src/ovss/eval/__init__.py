"""Evaluation: confusion-matrix metrics, the resumable / distributed runner behind ``ovss eval``, result files."""
from .metrics import METRICS, ConfusionMatrix, Metrics, cliper_metrics, cliptrase_metrics, compute_metrics, mmseg_metrics
from .report import EvalResult, load_result, table_markdown, write_result, write_table
from .runner import EvalConfig, evaluate

__all__ = ["METRICS", "ConfusionMatrix", "EvalConfig", "EvalResult", "Metrics", "cliper_metrics", "cliptrase_metrics",
           "compute_metrics", "evaluate", "load_result", "mmseg_metrics", "table_markdown", "write_result",
           "write_table"]
