"""Classification metrics with bootstrap confidence intervals, computed after every evaluation.

A single test-set number hides how much it would move on another draw of patients, so every metric
comes with a percentile bootstrap interval: resample the test set with replacement ``n_bootstrap``
times, recompute the metric, and report the ``(1-confidence)/2`` and ``(1+confidence)/2`` quantiles.
When ``groups`` (patient ids) are given the bootstrap draws *patients* and takes all of their images
(cluster bootstrap): images of one patient (neighbouring slices, repeat scans, left/right views) are
correlated, and resampling them one by one pretends there is more independent evidence than there
is, which makes the interval too narrow.

All resamples are handled at once: a resample is a row of per-image weights (how often each image
was drawn), the confusion matrices of all rows come from one grouped sum, and ROC AUC (Mann-Whitney
with ties counted half) and average precision are weighted sums over the images sorted by score
once per class. With all weights 1 the same code gives the point estimates, which the tests check
against scikit-learn. Definitions follow scikit-learn's defaults: macro averages run over the
classes present in ``y_true`` or in the predictions, a class never predicted has precision 0, and
one-vs-rest AUC needs every class present. A resample where a metric is undefined (for example
only one class, so no AUC) is skipped for that metric and the number of valid ones is recorded.

On few cases a percentile bootstrap is too narrow: a sample where every case is right (or every
positive outscores every negative) gives the interval [1, 1], whatever the truth. Measured on real
predictions (benchmarks/ci_coverage.py), 95% intervals of ROC AUC held the true value in about 74%
of 20-case test sets and 83% of 200-case ones. So the metrics that are proportions or built from
them are widened to a score interval where that is wider, which does not collapse at 0 or 1: Wilson's
for accuracy, sensitivity and specificity; Wilson's with the effective size C^2 / sum(1 / n_c) for
balanced accuracy (a mean of C per-class recalls); and for ROC AUC Newcombe's (2006, method 5): the
Hanley-McNeil variance taken at each candidate value rather than at the estimate, averaged over the
one-vs-rest classes. The score interval treats images as independent; the bootstrap keeps patients
together, so the union keeps what each gets right. Both are stored (``bootstrap_ci``, ``score_ci``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

from dualfuse.validation import check_labels, check_probs, to_numpy

__all__ = ["METRICS", "classification_metrics", "score_interval", "summarize"]

METRICS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
           "sensitivity", "specificity", "roc_auc", "pr_auc")
"""Metric keys in report order; ``sensitivity``/``specificity`` only appear for binary tasks."""

_CHUNK_ELEMENTS = 1 << 20  # resamples x images handled per block; bounds memory (~8 MB a matrix)



def _check_groups(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Patient ids -> (group index of each image, number of groups)."""
    g = to_numpy(groups)
    if g.ndim != 1 or len(g) != n:
        raise ValueError(f"groups must be 1-D with one patient id per image (N={n}), got shape {g.shape}")
    if np.issubdtype(g.dtype, np.floating) and np.isnan(g).any():
        raise ValueError("groups contains NaN patient ids")
    try:
        uniques, inverse = np.unique(g, return_inverse=True)
    except TypeError as err:
        raise ValueError(f"groups must be comparable patient ids (all str or all int, none missing): {err}") from None
    return inverse.reshape(-1), len(uniques)


def _check_options(n_bootstrap: int, confidence: float, class_names: Sequence[str] | None,
                   n_classes: int) -> list[str] | None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    if class_names is None:
        return None
    names = [str(name) for name in class_names]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names but probs has C={n_classes} columns")
    return names


class _Sorted:
    """One score column sorted ascending, with runs of tied scores and the positives marked."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray):
        self.order = np.argsort(scores, kind="stable")
        s = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        self.positive = positive[self.order].astype(np.float64)


def _run_sums(weights: np.ndarray, order: np.ndarray, starts: np.ndarray,
              mask: np.ndarray | None = None) -> np.ndarray:
    """Per-row sums of ``weights`` over runs of images: (B, N) -> (B, number of runs)."""
    w = weights[:, order]
    if mask is not None:
        w *= mask
    return np.add.reduceat(w, starts, axis=1)


def _ranking_scores(weights: np.ndarray, col: _Sorted) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ROC AUC and average precision of one score column, one value per row (NaN if undefined)."""
    pos = _run_sums(weights, col.order, col.starts, col.positive)
    neg = _run_sums(weights, col.order, col.starts) - pos
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Mann-Whitney: each positive beats the negatives scored strictly lower, ties count half.
        below = np.cumsum(neg, axis=1) - neg
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        # Average precision: thresholds from the highest score down, sum of recall steps x precision.
        pos_d, neg_d = pos[:, ::-1], neg[:, ::-1]
        tp = np.cumsum(pos_d, axis=1)
        predicted = tp + np.cumsum(neg_d, axis=1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        ap = (pos_d * precision).sum(axis=1) / n_pos
    return np.where(defined, auc, np.nan), np.where(defined, ap, np.nan)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (values * mask).sum(axis=1) / mask.sum(axis=1)


class _Evaluator:
    """Everything about the data that does not depend on the resample, computed once."""

    def __init__(self, y: np.ndarray, probs: np.ndarray):
        self.n_classes = probs.shape[1]
        pred = probs.argmax(axis=1)
        cells = y * self.n_classes + pred
        self.cell_order = np.argsort(cells, kind="stable")
        self.cell_starts = np.flatnonzero(np.r_[True, np.diff(cells[self.cell_order]) != 0])
        self.cell_ids = cells[self.cell_order][self.cell_starts]
        score_classes = [1] if self.n_classes == 2 else range(self.n_classes)
        self.columns = [_Sorted(probs[:, c], y == c) for c in score_classes]

    def confusion(self, weights: np.ndarray) -> np.ndarray:
        """(B, N) weights -> (B, C, C) weighted confusion matrices, rows = true class."""
        c = self.n_classes
        cm = np.zeros((len(weights), c * c))
        cm[:, self.cell_ids] = _run_sums(weights, self.cell_order, self.cell_starts)
        return cm.reshape(-1, c, c)

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        cm = self.confusion(weights)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        true_n, pred_n = cm.sum(axis=2), cm.sum(axis=1)
        # scikit-learn's default labels: the classes seen in y_true or in the predictions.
        present = ((true_n > 0) | (pred_n > 0)).astype(np.float64)
        recall = _safe_div(tp, true_n)
        out = {
            "accuracy": tp.sum(axis=1) / true_n.sum(axis=1),
            "balanced_accuracy": _masked_mean(recall, true_n > 0),
            "precision_macro": _masked_mean(_safe_div(tp, pred_n), present),
            "recall_macro": _masked_mean(recall, present),
            "f1_macro": _masked_mean(_safe_div(2 * tp, true_n + pred_n), present),
        }
        if self.n_classes == 2:
            with np.errstate(divide="ignore", invalid="ignore"):
                out["sensitivity"] = tp[:, 1] / true_n[:, 1]
                out["specificity"] = tp[:, 0] / true_n[:, 0]
        ranking = [_ranking_scores(weights, col) for col in self.columns]
        # One-vs-rest macro: NaN (undefined) as soon as one class has no positives or no negatives.
        out["roc_auc"] = np.mean([auc for auc, _ in ranking], axis=0)
        out["pr_auc"] = np.mean([ap for _, ap in ranking], axis=0)
        return out


def _resample_weights(rng: np.random.Generator, group_of: np.ndarray, n_groups: int,
                      n_rows: int) -> np.ndarray:
    """(n_rows, N) image weights: each row draws ``n_groups`` groups with replacement."""
    draws = rng.integers(0, n_groups, size=(n_rows, n_groups))
    draws += n_groups * np.arange(n_rows)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_rows * n_groups).reshape(n_rows, n_groups)
    return counts[:, group_of].astype(np.float64)


def _bootstrap(evaluate: _Evaluator, group_of: np.ndarray, n_groups: int, n_bootstrap: int,
               seed: int | None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // len(group_of))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n_bootstrap, chunk):
        rows = min(chunk, n_bootstrap - start)
        parts.append(evaluate(_resample_weights(rng, group_of, n_groups, rows)))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _undefined_reason(name: str, y: np.ndarray, n_classes: int) -> str:
    if name == "sensitivity":
        return "no positive (class 1) samples in y_true"
    if name == "specificity":
        return "no negative (class 0) samples in y_true"
    if n_classes == 2:
        return "only one class in y_true; AUC needs both"
    missing = sorted(set(range(n_classes)) - set(np.unique(y).tolist()))
    return f"classes {missing} absent from y_true; one-vs-rest AUC needs every class"


_GRID = np.linspace(0.0, 1.0, 100_001)


def _score_solve(value: float, variance_at, z: float) -> tuple[float, float]:
    """The values t in [0, 1] with (value - t)^2 <= z^2 variance_at(t): a score interval, found on a
    fine grid (the variance functions here are smooth and the set is one interval around `value`)."""
    inside = _GRID[(value - _GRID) ** 2 <= z * z * variance_at(_GRID)]
    low, high = (inside.min(), inside.max()) if len(inside) else (value, value)
    return float(min(low, value)), float(max(high, value))


def _auc_variance(t: np.ndarray, positives: int, negatives: int) -> np.ndarray:
    """Hanley-McNeil variance of a Mann-Whitney AUC at true value t, with Newcombe's N* = (m + n)/2 - 1."""
    n_star = (positives + negatives) / 2 - 1
    return t * (1 - t) * (1 + n_star * (1 - t) / (2 - t) + n_star * t / (1 + t)) / (positives * negatives)


def score_interval(name: str, value: float, y: np.ndarray, n_classes: int,
                   confidence: float = 0.95) -> tuple[float, float] | None:
    """The score interval of metric `name` at its estimate `value`, or None where there is none."""
    z = float(norm.ppf(0.5 + confidence / 2))
    counts = np.bincount(y, minlength=n_classes)
    if name == "accuracy":
        return _score_solve(value, lambda t: t * (1 - t) / len(y), z)
    if name in ("sensitivity", "specificity"):
        n = counts[1 if name == "sensitivity" else 0]
        return _score_solve(value, lambda t: t * (1 - t) / n, z) if n else None
    if name == "balanced_accuracy":
        seen = counts[counts > 0]
        return _score_solve(value, lambda t: t * (1 - t) * np.sum(1 / seen) / len(seen) ** 2, z)
    if name == "roc_auc":
        pairs = [(counts[c], len(y) - counts[c]) for c in ([1] if n_classes == 2 else range(n_classes))]
        if not all(m and n for m, n in pairs):
            return None
        return _score_solve(value, lambda t: sum(_auc_variance(t, m, n) for m, n in pairs) / len(pairs) ** 2, z)
    return None


def _summarise_metric(value: float, samples: np.ndarray | None, confidence: float,
                      reason: str, score: tuple[float, float] | None = None) -> dict[str, Any]:
    if np.isnan(value):
        return {"value": None, "ci_low": None, "ci_high": None, "reason": reason}
    entry: dict[str, Any] = {"value": float(value), "ci_low": None, "ci_high": None}
    if samples is None:
        return entry
    valid = samples[~np.isnan(samples)]
    if len(valid) < len(samples):
        entry["n_valid"] = int(len(valid))
    if len(valid) == 0:
        entry["reason"] = "undefined in every bootstrap resample"
        return entry
    tail = 50 * (1 - confidence)
    low, high = (float(v) for v in np.percentile(valid, [tail, 100 - tail]))
    entry["ci_low"], entry["ci_high"] = low, high
    if score is not None:  # the wider of the two on each side
        entry.update(ci_low=min(low, score[0]), ci_high=max(high, score[1]), bootstrap_ci=[low, high],
                     score_ci=list(score))
    return entry


def classification_metrics(y_true: Any, probs: Any, groups: Any = None,
                           class_names: Sequence[str] | None = None, n_bootstrap: int = 1000,
                           confidence: float = 0.95, seed: int | None = 0) -> dict[str, Any]:
    """Point estimates and CIs of the standard classification metrics (percentile bootstrap, widened
    to the score interval where that is wider: see the module docstring).

    Args:
        y_true: (N,) integer class indices in 0..C-1.
        probs: (N, C) softmax probabilities (rows sum to 1); for binary tasks C=2 and class 1 is
            the positive class. Predictions are ``probs.argmax(1)``.
        groups: optional (N,) patient ids; when given the bootstrap resamples patients (all of a
            drawn patient's images), otherwise single images.
        class_names: optional C names, stored alongside the confusion matrix.
        n_bootstrap: resamples (0: no intervals, ``ci_low``/``ci_high`` are None).
        confidence: coverage of the interval, e.g. 0.95.
        seed: seed of the resampling; the same seed gives the same intervals.

    Returns:
        A JSON-serialisable dict: one ``{"value", "ci_low", "ci_high"}`` entry per metric in
        ``METRICS`` (``sensitivity``/``specificity`` for binary tasks only), plus ``n_valid`` where
        some resamples left the metric undefined and ``reason`` where the value or CI is None;
        then ``confusion_matrix`` (rows = true class), ``class_names``, ``n``, ``n_groups``,
        ``n_bootstrap``, ``confidence`` and ``ci_method``.
    """
    p = check_probs(probs)
    n, n_classes = p.shape
    y = check_labels(y_true, n, n_classes)
    names = _check_options(n_bootstrap, confidence, class_names, n_classes)
    if groups is None:
        group_of, n_groups, unit = np.arange(n), None, "images"
    else:
        group_of, n_groups = _check_groups(groups, n)
        unit = "patients"

    evaluate = _Evaluator(y, p)
    ones = np.ones((1, n))
    point = {name: values[0] for name, values in evaluate(ones).items()}
    samples = (_bootstrap(evaluate, group_of, n_groups or n, n_bootstrap, seed)
               if n_bootstrap else {})

    result: dict[str, Any] = {
        name: _summarise_metric(value, samples.get(name), confidence, _undefined_reason(name, y, n_classes),
                                score_interval(name, value, y, n_classes, confidence)
                                if n_bootstrap and not np.isnan(value) else None)
        for name, value in point.items()
    }
    result.update(
        confusion_matrix=evaluate.confusion(ones)[0].astype(int).tolist(),
        class_names=names,
        n=int(n),
        n_groups=None if n_groups is None else int(n_groups),
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        ci_method=(f"percentile bootstrap over {unit}, widened to the score interval where wider (Wilson; "
                   "Newcombe for ROC AUC)") if n_bootstrap else "none",
    )
    return result


def _format_metric(entry: dict[str, Any], n_bootstrap: int, digits: int) -> str:
    if entry["value"] is None:
        return f"n/a ({entry.get('reason', 'undefined')})"
    text = f"{entry['value']:.{digits}f}"
    if entry["ci_low"] is not None:
        text += f" [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
    elif n_bootstrap:
        text += f" [no CI: {entry.get('reason', 'undefined')}]"
    if "n_valid" in entry and entry["ci_low"] is not None:
        text += f" ({entry['n_valid']}/{n_bootstrap} resamples valid)"
    return text


def summarize(metrics: dict[str, Any], digits: int = 3) -> list[tuple[str, str]]:
    """Rows ``(name, text)`` for a table, e.g. ``("roc_auc", "0.962 [0.948, 0.975]")``.

    One row per metric present, in ``METRICS`` order, then the sample size and the CI method.
    """
    n_bootstrap = int(metrics.get("n_bootstrap", 0))
    rows = [(name, _format_metric(metrics[name], n_bootstrap, digits))
            for name in METRICS if name in metrics]
    size = f"{metrics['n']} images"
    if metrics.get("n_groups") is not None:
        size += f" from {metrics['n_groups']} patients"
    rows.append(("n", size))
    if n_bootstrap:
        level = f"{100 * metrics['confidence']:g}%"
        rows.append(("ci", f"{level} {metrics['ci_method']}, {n_bootstrap} resamples"))
    return rows
