"""Paired comparisons: is A better than B on the same cases? A CI of the difference, never two point estimates.

Both sides of a pair are scored on the same test cases (aligned by case id), so case difficulty
cancels out of the difference. The CI comes from a bootstrap that resamples cases (whole patients
where a `group` array is given) identically for both sides, within each seed; with several seeds
the statistic is the mean of the per-seed differences. A verdict is "win" or "loss" only when the
95% CI excludes 0, else "tie".

Kept free of torch (scipy and numpy only), so the docs generator and its tests stay light.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

N_BOOTSTRAP = 1000


def patient_groups(patient_ids: Sequence[str] | None) -> list[str] | None:
    """The ids to resample whole patients by, or None where every case is its own patient (or an id is
    missing): a bootstrap over one-case patients is a bootstrap over cases."""
    ids = list(patient_ids or ())
    return ids if ids and all(ids) and len(set(ids)) < len(ids) else None


def case_predictions(csv_path, task: str, classes: Sequence[str] | None = None, split: str | None = "test") -> dict:
    """One task's predictions per case from a predictions.csv, the unit of every paired comparison: case
    ids, label indices and probabilities (6 decimals) in the file's order, plus `patient_id` only where
    `patient_groups` would use it (repeating the case ids made a quarter of a results file).

    `classes` fixes the probability columns' order (default: the file's); `split` None keeps every row
    (cv's out-of-fold file has no test split)."""
    import pandas as pd

    frame = pd.read_csv(csv_path, dtype={"case_id": str, "patient_id": str}, keep_default_na=False)
    if split is not None:
        frame = frame[frame["split"] == split]
    frame = frame[frame[f"{task}_true"] != ""]
    prefix = f"{task}_prob_"
    classes = list(classes or [c[len(prefix):] for c in frame.columns if c.startswith(prefix)])
    cases = {"case_id": frame["case_id"].tolist(), "label": [classes.index(c) for c in frame[f"{task}_true"]],
             "probs": frame[[prefix + c for c in classes]].round(6).to_numpy().tolist()}
    groups = patient_groups(frame["patient_id"].tolist()) if "patient_id" in frame else None
    return cases | ({"patient_id": groups} if groups else {})


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC from ranks (Mann-Whitney, ties averaged): sklearn's roc_auc_score value, fast enough
    for thousands of bootstrap draws; NaN when one class is missing."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Binary: AUROC of the positive class; several classes: the mean one-vs-rest AUROC (macro)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.shape[1] == 2:
        return binary_auroc(probs[:, 1], labels == 1)
    return float(np.nanmean([binary_auroc(probs[:, c], labels == c) for c in range(probs.shape[1])]))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of cases whose most probable class is the true one (the argmax, 0.5 for two classes)."""
    return float(np.mean(np.argmax(np.asarray(probs), axis=1) == np.asarray(labels)))


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean recall over the classes present (sklearn's balanced_accuracy_score): on a set where one class
    is 72% of the cases, accuracy rewards always saying that class; this does not."""
    predicted, labels = np.argmax(np.asarray(probs), axis=1), np.asarray(labels)
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


def _resample(rng: np.random.Generator, groups: np.ndarray | None, n: int) -> np.ndarray:
    if groups is None:
        return rng.integers(0, n, n)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    return np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])


def paired_bootstrap(pairs: Sequence[tuple[dict, dict]], statistic: Callable[[dict], float],
                     n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, groups: Sequence | None = None) -> dict:
    """Mean over seeds of statistic(a) - statistic(b), with a 95% paired-bootstrap CI.

    `pairs` holds one `(a, b)` per seed: dicts of per-case arrays aligned case by case (same length);
    `groups` (one array per seed, or None) names each case's patient, so resampling keeps a
    patient's cases together."""
    rng = np.random.default_rng(seed)
    pairs = [({k: np.asarray(v) for k, v in a.items()}, {k: np.asarray(v) for k, v in b.items()}) for a, b in pairs]
    groups = list(groups) if groups is not None else [None] * len(pairs)
    point = float(np.mean([statistic(a) - statistic(b) for a, b in pairs]))
    draws = []
    for _ in range(n_bootstrap):
        deltas = []
        for (a, b), group in zip(pairs, groups):
            n = len(next(iter(a.values())))
            idx = _resample(rng, None if group is None else np.asarray(group), n)
            deltas.append(statistic({k: v[idx] for k, v in a.items()}) - statistic({k: v[idx] for k, v in b.items()}))
        draws.append(np.nanmean(deltas))
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"delta": point, "ci_low": float(low), "ci_high": float(high), "seeds": len(pairs)}


def verdict(difference: dict, lower_is_better: bool = False) -> str:
    """'win' / 'loss' for A only when the CI excludes 0, else 'tie'."""
    if difference["ci_low"] > 0:
        return "loss" if lower_is_better else "win"
    if difference["ci_high"] < 0:
        return "win" if lower_is_better else "loss"
    return "tie"


def format_difference(difference: dict, digits: int = 3, max_digits: int = 6) -> str:
    """'+0.0034 [+0.0004, +0.0071]': the difference and its CI, with digits added until no bound that is not
    zero prints as ±0, so a reader can check a win or a loss against the printed interval."""
    bounds = (difference["ci_low"], difference["ci_high"])
    while digits < max_digits and any(b != 0 and round(b, digits) == 0 for b in bounds):
        digits += 1
    low, high = (f"{b:+.{digits}f}" for b in bounds)
    return f"{difference['delta']:+.{digits}f} [{low}, {high}]"
