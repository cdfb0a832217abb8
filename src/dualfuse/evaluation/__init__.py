"""Evaluation: classification metrics with (patient-level) bootstrap confidence intervals."""
from dualfuse.evaluation.metrics import METRICS, classification_metrics, summarize

__all__ = ["METRICS", "classification_metrics", "summarize"]
