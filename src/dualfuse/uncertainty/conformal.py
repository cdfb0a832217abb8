"""Split conformal prediction sets (Vovk et al. 2005; Angelopoulos & Bates 2021 tutorial).

On a calibration set of n labelled cases, exchangeable with the test cases, compute a
non-conformity score s(x, y) of the true class and take

    qhat = the k-th smallest score, k = ceil((n + 1)(1 - alpha)),

i.e. the empirical quantile at level k / n with the inverted-CDF rule; the set
{c : s(x, c) <= qhat} then holds the true class with probability at least 1 - alpha (marginally,
over calibration and test draws), and at most 1 - alpha + 1 / (n + 1) for continuous scores.
(``np.quantile(scores, k / n, method="higher")``, as in the tutorial's code, interpolates over
n - 1 gaps and returns the (k+1)-th smallest for k < n: valid but needlessly conservative.) When
k > n, i.e. alpha < 1 / (n + 1), qhat = +inf: every set is every class.

Scores (``score=``):

* ``"lac"`` (least ambiguous set-valued classifier, Sadinle et al. 2019): 1 - p_y. Smallest
  sets on average, but they can be empty when no class is probable enough.
* ``"aps"`` (adaptive prediction sets, Romano et al. 2020): the probability mass of the classes
  ranked at or above y, sum_{c: p_c > p_y} p_c + p_y (classes tied with y are not counted, so the
  score does not depend on an arbitrary ordering). This deterministic version is the default; with
  ``randomized=True`` the last term becomes U·p_y with U ~ Uniform(0, 1) drawn per case from
  ``seed``, which makes coverage close to exactly 1 - alpha instead of at least 1 - alpha.

``allow_empty=False`` adds the argmax class to any empty set (coverage can only go up).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import beta, binomtest

from dualfuse.validation import check_labels, check_probs, to_numpy

__all__ = ["SCORES", "check_alpha", "conformal_report", "conformal_scores", "conformal_threshold", "coverage_spread",
           "fewest_cases_for_coverage", "prediction_sets"]

SCORES = ("lac", "aps")


def check_alpha(alpha: Any) -> None:
    """The miscoverage is a fraction strictly between 0 and 1 (0 would make every set every class)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number strictly between 0 and 1, got {alpha!r}")


def _check_options(score: str, alpha: float | None = None) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if alpha is not None:
        check_alpha(alpha)


def _all_scores(p: np.ndarray, score: str, randomized: bool, seed: Any) -> np.ndarray:
    """(N, C) score of every candidate class."""
    if score == "lac":
        return 1.0 - p
    # Mass of the classes strictly more probable than c: the cumulative sum over classes sorted
    # by descending probability, minus the run of ties c belongs to.
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    cum = np.cumsum(sorted_p, axis=1)
    new_run = np.c_[np.ones((len(p), 1), dtype=bool), sorted_p[:, 1:] != sorted_p[:, :-1]]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(p.shape[1]), 0), axis=1)
    above_sorted = np.take_along_axis(cum, run_start, axis=1) - np.take_along_axis(
        sorted_p, run_start, axis=1)
    above = np.empty_like(p)
    np.put_along_axis(above, order, above_sorted, axis=1)
    if randomized:
        return above + np.random.default_rng(seed).uniform(size=(len(p), 1)) * p
    return above + p


def conformal_scores(probs: Any, y: Any, score: str = "lac", randomized: bool = False,
                     seed: Any = 0) -> np.ndarray:
    """(N,) non-conformity score of the true class of each case (higher = less conforming)."""
    _check_options(score)
    p = check_probs(probs)
    labels = check_labels(y, *p.shape)
    return _all_scores(p, score, randomized, seed)[np.arange(len(labels)), labels]


def conformal_threshold(cal_probs: Any, cal_y: Any, alpha: float = 0.1, score: str = "lac",
                        randomized: bool = False, seed: Any = 0) -> float:
    """Qhat from calibration probabilities (N, C) and labels at miscoverage ``alpha``."""
    _check_options(score, alpha)
    scores = conformal_scores(cal_probs, cal_y, score, randomized, seed)
    n = len(scores)
    k = _rank(n, alpha)
    if k > n:
        return math.inf
    return float(np.partition(scores, k - 1)[k - 1])


def _rank(n: int, alpha: float) -> int:
    # Rounding first keeps e.g. (9 + 1) * (1 - 0.2) = 8.000000000000002 from becoming 9.
    return math.ceil(round((n + 1) * (1 - alpha), 9))


def coverage_spread(n: int, alpha: float, level: float = 0.9) -> tuple[float, float]:
    """Where the coverage of sets calibrated on n cases lands, over calibration draws (central `level`).

    1 - alpha holds on average over calibration sets; for one given set of n cases the coverage on new
    cases is Beta(k, n + 1 - k) distributed (continuous scores; Vovk 2012), so a small calibration split
    gives "90% sets" that may cover 80%. (1, 1) when qhat is infinite (every set holds every class).
    """
    check_alpha(alpha)
    k = _rank(n, alpha)
    if k > n:
        return 1.0, 1.0
    low, high = beta.ppf([(1 - level) / 2, (1 + level) / 2], k, n + 1 - k)
    return float(low), float(high)


def fewest_cases_for_coverage(alpha: float, slack: float = 0.05, level: float = 0.9, most: int = 100_000) -> int:
    """The fewest calibration cases from which on the low end of `coverage_spread` stays at or above
    1 - alpha - slack for every larger split (the rank's rounding makes it saw-toothed, so the last
    failure decides; below ceil(1/alpha) - 1 cases every set holds every class and nothing fails)."""
    check_alpha(alpha)
    n = np.arange(1, most + 1)
    k = np.ceil(np.round((n + 1) * (1 - alpha), 9))
    low = np.where(k > n, 1.0, beta.ppf((1 - level) / 2, np.minimum(k, n), np.maximum(n + 1 - k, 1)))
    failing = np.flatnonzero(low < 1 - alpha - slack)
    return int(n[failing[-1]] + 1) if len(failing) else 1


def prediction_sets(probs: Any, qhat: float, score: str = "lac", randomized: bool = False,
                    seed: Any = 0, allow_empty: bool = True) -> np.ndarray:
    """Boolean (N, C) membership: class c is in case i's set when its score is <= qhat."""
    _check_options(score)
    q = float(qhat)
    if np.isnan(q):
        raise ValueError("qhat is NaN")
    p = check_probs(probs)
    sets = _all_scores(p, score, randomized, seed) <= q
    if not allow_empty:
        empty = ~sets.any(axis=1)
        sets[empty, p[empty].argmax(axis=1)] = True
    return sets


def binomial_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) confidence interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


def conformal_report(cal_probs: Any, cal_y: Any, test_probs: Any, test_y: Any,
                     alpha: float = 0.1, score: str = "lac", randomized: bool = False,
                     seed: int = 0, allow_empty: bool = True) -> dict[str, Any]:
    """Calibrate on one split, build sets on another and measure them.

    Returns a JSON-serialisable dict: ``qhat`` (``Infinity`` in JSON when alpha < 1/(n_cal+1)),
    ``alpha``, ``target_coverage`` (1 - alpha), ``score``, ``randomized``, ``coverage`` (fraction
    of test sets holding the true class), ``mean_set_size``, ``empty_fraction``,
    ``singleton_fraction``, ``set_size_counts`` (how many sets have 0..C classes), ``n_cal`` and
    ``n_test``, the coverage's exact binomial 95% CI (``coverage_ci_low``/``_high``), ``below_target``
    (the whole CI under 1 - alpha: calibration and test data differ) and ``class_coverage`` (the
    same per true class, where imbalance hides under-coverage of the rare class). With ``randomized`` the calibration and test draws use independent streams
    spawned from ``seed``.
    """
    cal_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
    qhat = conformal_threshold(cal_probs, cal_y, alpha, score, randomized, cal_seed)
    p = check_probs(test_probs)
    labels = check_labels(test_y, *p.shape)
    sets = prediction_sets(p, qhat, score, randomized, test_seed, allow_empty)
    sizes = sets.sum(axis=1)
    covered = sets[np.arange(len(labels)), labels]
    low, high = binomial_ci(int(covered.sum()), len(covered))
    per_class = []
    for c in range(p.shape[1]):
        members = labels == c
        if members.any():
            c_low, c_high = binomial_ci(int(covered[members].sum()), int(members.sum()))
            per_class.append({"class": c, "n": int(members.sum()), "coverage": float(covered[members].mean()),
                              "ci_low": c_low, "ci_high": c_high, "below_target": c_high < 1 - alpha})
    return {
        "qhat": qhat,
        "alpha": float(alpha),
        "target_coverage": 1 - float(alpha),
        "score": score,
        "randomized": bool(randomized),
        "coverage": float(covered.mean()),
        "coverage_ci_low": low,
        "coverage_ci_high": high,
        # Coverage is guaranteed only when calibration and test cases are exchangeable; a 95% CI
        # entirely below the target says they are not (another site, scanner or population).
        "below_target": high < 1 - float(alpha),
        "class_coverage": per_class,
        "mean_set_size": float(sizes.mean()),
        "empty_fraction": float((sizes == 0).mean()),
        "singleton_fraction": float((sizes == 1).mean()),
        "set_size_counts": np.bincount(sizes, minlength=p.shape[1] + 1).tolist(),
        "n_cal": int(len(to_numpy(cal_probs))),
        "n_test": int(len(labels)),
    }
