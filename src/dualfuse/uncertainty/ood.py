"""Out-of-distribution detection with uncertainty scores.

A score is useful for flagging inputs unlike the training data (another scanner, another organ,
corrupted images) when out-of-distribution cases score higher than in-distribution ones. AUROC
of that separation is 1 for perfect, 0.5 for chance (scikit-learn's ``roc_auc_score`` with the
out-of-distribution cases as the positive class, ties counted half). ``fpr_at_95_tpr`` is the
fraction of in-distribution cases flagged by the threshold that catches 95% of the OOD cases.
Scores must grow with "OOD-ness"; pass the negative of a confidence.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from dualfuse.validation import check_scores

__all__ = ["ood_auroc", "ood_report"]


def _labelled(in_scores: Any, out_scores: Any, names: tuple[str, str] = ("in_scores", "out_scores")
              ) -> tuple[np.ndarray, np.ndarray]:
    """OOD labels (1 = out) and the scores of both sets, concatenated."""
    s_in = check_scores(in_scores, names[0])
    s_out = check_scores(out_scores, names[1])
    return np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out]


def ood_auroc(in_scores: Any, out_scores: Any) -> float:
    """AUROC of telling out- from in-distribution cases, higher score = more OOD."""
    return float(roc_auc_score(*_labelled(in_scores, out_scores)))


def _fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr_level: float = 0.95) -> float:
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def ood_report(in_measures: Mapping[str, Any], out_measures: Mapping[str, Any],
               keys: Sequence[str] = ("predictive_entropy", "mutual_information")) -> dict[str, Any]:
    """Per key: ``auroc``, ``fpr_at_95_tpr``, ``in_mean`` and ``out_mean``; plus ``n_in``, ``n_out``.

    ``in_measures``/``out_measures`` are dicts of (N,) per-case scores, e.g. the output of
    :func:`dualfuse.uncertainty.uncertainty_measures` on in- and out-of-distribution data.
    """
    if isinstance(keys, str) or not keys:
        raise ValueError(f"keys must be a non-empty sequence of measure names, got {keys!r}")
    report: dict[str, Any] = {}
    for key in keys:
        missing = [side for side, m in (("in_measures", in_measures), ("out_measures", out_measures))
                   if key not in m]
        if missing:
            raise ValueError(f"measure {key!r} missing from {' and '.join(missing)}")
        labels, scores = _labelled(in_measures[key], out_measures[key],
                                   (f"in_measures[{key!r}]", f"out_measures[{key!r}]"))
        report[key] = {"auroc": float(roc_auc_score(labels, scores)),
                       "fpr_at_95_tpr": _fpr_at_tpr(labels, scores),
                       "in_mean": float(scores[labels == 0].mean()),
                       "out_mean": float(scores[labels == 1].mean())}
    report["n_in"] = int((labels == 0).sum())
    report["n_out"] = int((labels == 1).sum())
    return report
