"""Input validation shared by metrics and uncertainty code: one clear line instead of a wrong number.

The bottom of the package (numpy only), so evaluation and uncertainty use the same checks without
importing each other. Each function returns the validated array (float64 scores and probabilities,
int64 labels) or raises a one-line `ValueError` saying what was wrong.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_labels", "check_probs", "check_scores", "to_numpy"]

_SUM_TOLERANCE = 1e-2  # loose enough for half-precision softmax, tight enough to catch logits


def to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_labels(y_true: Any, n: int, n_classes: int) -> np.ndarray:
    y = to_numpy(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D (N,) class indices, got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"y_true has {len(y)} labels but probs has {n} rows")
    if y.dtype == bool:
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        whole = (np.issubdtype(y.dtype, np.floating) and bool(np.isfinite(y).all())
                 and bool((y == np.round(y)).all()))
        if not whole:
            raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
        y = y.astype(np.int64)
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise ValueError(f"y_true has {int(bad.sum())} labels outside 0..{n_classes - 1} "
                         f"(e.g. {y[bad][0]}); probs has C={n_classes} columns")
    return y.astype(np.int64)


def check_probs(probs: Any) -> np.ndarray:
    p = to_numpy(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D (N, C) array of class probabilities, got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("no samples: probs has N=0 rows")
    if p.shape[1] < 2:
        raise ValueError(f"probs must have C >= 2 columns (binary tasks use C=2), got C={p.shape[1]}")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"probs must be a real-valued array, got dtype {p.dtype}")
    p = p.astype(np.float64)
    finite = np.isfinite(p)
    if not finite.all():
        raise ValueError(f"probs contains {int((~finite).sum())} NaN/inf values")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ValueError(f"probs must lie in [0, 1] (got min {p.min():.4g}, max {p.max():.4g}); "
                         "pass softmax probabilities, not logits")
    worst = float(np.abs(p.sum(axis=1) - 1).max())
    if worst > _SUM_TOLERANCE:
        raise ValueError(f"probs rows must sum to 1 (worst row is off by {worst:.3g}); "
                         "pass softmax probabilities, not logits or sigmoids")
    return p


def check_scores(scores: Any, name: str = "confidence") -> np.ndarray:
    s = to_numpy(scores)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,) per-case scores, got shape {s.shape}")
    if len(s) == 0:
        raise ValueError(f"no cases: {name} is empty")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)
            or s.dtype == bool):
        raise ValueError(f"{name} must be real-valued, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(s)).sum())} NaN/inf values")
    return s
