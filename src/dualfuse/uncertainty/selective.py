"""Selective prediction: risk-coverage curves, AURC and referral thresholds.

A model that may abstain accepts the cases whose ``confidence`` is at least a threshold and refers
the rest to a specialist. ``confidence`` is any score where higher means more certain (the top
probability, 1 - normalized entropy, -mutual information, ...) and ``correct`` says whether the
model's prediction for the case was right.

Sorting the cases by confidence, highest first, the k most confident give one operating point:
coverage k/N and risk (error rate) among them. Cases with tied confidence cannot be split by a
threshold, so the curve only has the points at the end of each run of ties; without ties these are
k = 1..N. AURC is the area under the risk-coverage step curve, sum over points of risk x (coverage
step), which without ties is the usual mean over k of the risk of the k most confident (Geifman et
al. 2019). Lower is better.

A referral threshold for a target accuracy read off the calibration cases' own accuracy is too
optimistic on small data: it is picked where those few cases happened to do well. With a
``guarantee`` it is certified instead: an operating point is accepted only when the one-sided
Clopper-Pearson lower bound of its accuracy reaches the target, so with probability at least
``guarantee`` over the calibration draw, the accepted cases of data like it are at least that
accurate. Two searches share the error budget 1 - guarantee, half each, and the larger coverage
either certifies is kept (a union bound keeps the promise):

* a binary search over the operating points (selection with guaranteed risk, SGR, Geifman &
  El-Yaniv 2017), each of its ceil(log2(N + 1)) tests at level 1 - budget / tests: robust when
  there are many calibration cases;
* a fixed sequence (as in Learn then Test, Angelopoulos et al. 2021): the operating points in order
  of coverage, from the smallest set whose perfect record could reach the target, each tested at
  the full level 1 - budget and stopping at the first that fails: no test pays for the others,
  which is what it gains on a few hundred calibration cases.

The order of both searches depends only on the confidences, never on which cases were right.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import beta

from dualfuse.validation import check_scores, to_numpy

DEFAULT_GUARANTEE = 0.95
"""How sure `evaluate --target-accuracy` is that the accepted cases meet the target."""

__all__ = ["DEFAULT_GUARANTEE", "accuracy_at_coverage", "accuracy_lower_bound", "aurc", "check_target",
           "choose_coverage_threshold", "choose_referral_threshold", "fewest_cases_to_certify", "refer",
           "risk_coverage_curve"]


def check_target(name: str, value: Any) -> None:
    """A target accuracy or coverage is a fraction in (0, 1]; say which one is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")


def _check_inputs(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    conf = check_scores(confidence)
    ok = to_numpy(correct)
    if ok.ndim != 1 or len(ok) != len(conf):
        raise ValueError(f"correct must be 1-D with one flag per case (N={len(conf)}), got shape {ok.shape}")
    if ok.dtype != bool and not np.isin(ok, (0, 1)).all():
        raise ValueError("correct must hold booleans or 0/1 (prediction right or wrong)")
    return conf, ok.astype(bool)


def _operating_points(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accepted counts k, errors among them and the threshold of each achievable point."""
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    errors = np.cumsum(~correct[order])
    ends = np.flatnonzero(np.r_[sorted_conf[1:] != sorted_conf[:-1], True])
    return ends + 1, errors[ends], sorted_conf[ends]


def risk_coverage_curve(confidence: Any, correct: Any) -> dict[str, list[float]]:
    """``coverage``, ``risk`` and ``thresholds`` (accept confidence >= threshold), coverage ascending."""
    conf, ok = _check_inputs(confidence, correct)
    accepted, errors, thresholds = _operating_points(conf, ok)
    return {"coverage": (accepted / len(conf)).tolist(), "risk": (errors / accepted).tolist(),
            "thresholds": thresholds.tolist()}


def aurc(confidence: Any, correct: Any) -> float:
    """Area under the risk-coverage curve (lower is better)."""
    conf, ok = _check_inputs(confidence, correct)
    accepted, errors, _ = _operating_points(conf, ok)
    steps = np.diff(accepted, prepend=0)
    return float((errors / accepted * steps).sum() / len(conf))


def _lower_bounds(correct: np.ndarray, n: np.ndarray, level: float) -> np.ndarray:
    """Vectorised one-sided Clopper-Pearson lower bounds (0 where nothing is right)."""
    correct, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        bounds = beta.ppf(1 - level, correct, n - correct + 1)
    return np.where(correct > 0, bounds, 0.0)


def accuracy_lower_bound(correct: int, n: int, level: float) -> float:
    """One-sided Clopper-Pearson lower bound on an accuracy seen as ``correct`` of ``n``: the true
    accuracy is at least this with probability ``level`` (0 when ``n`` is 0)."""
    return float(_lower_bounds(correct, n, level)) if n else 0.0


def _binary_search_pick(accepted: np.ndarray, errors: np.ndarray, target: float,
                        budget: float) -> tuple[int | None, float, float]:
    """SGR: the operating point with the largest coverage a binary search certifies, its accuracy's lower
    bound and the level each test used (1 - budget / number of tests)."""
    level = 1 - budget / max(1, math.ceil(math.log2(len(accepted) + 1)))
    low, high, bound = -1, len(accepted), 0.0  # points <= low are certified, points >= high are not
    while high - low > 1:
        middle = (low + high) // 2
        k = int(accepted[middle])
        lower = accuracy_lower_bound(k - int(errors[middle]), k, level)
        if lower >= target:
            low, bound = middle, lower
        else:
            high = middle
    return (None if low < 0 else low), bound, level


def _fewest_cases(target: float, budget: float) -> float:
    """The fewest accepted cases whose perfect record has a lower bound at ``target`` (level 1 - budget)."""
    return math.ceil(math.log(budget) / math.log(target) - 1e-9) if target < 1 else math.inf


def fewest_cases_to_certify(target_accuracy: float, guarantee: float = DEFAULT_GUARANTEE) -> float:
    """How many decided calibration cases, all of them right, it takes at least to certify
    ``target_accuracy`` (36 for 0.9 at 0.95, 72 for 0.95; inf for 1): fewer can only refer every case."""
    return _fewest_cases(target_accuracy, (1 - guarantee) / 2)


def _fixed_sequence_pick(accepted: np.ndarray, errors: np.ndarray, target: float,
                         budget: float) -> tuple[int | None, float, float]:
    """The operating points in order of coverage, each tested at level 1 - budget, from the first with
    enough cases for a perfect record to reach the target; the last one before the first failure."""
    level = 1 - budget
    first = np.searchsorted(accepted, _fewest_cases(target, budget))
    bounds = _lower_bounds(accepted[first:] - errors[first:], accepted[first:], level)
    failed = np.flatnonzero(bounds < target)
    passed = failed[0] if len(failed) else len(bounds)
    return (None, 0.0, level) if passed == 0 else (first + passed - 1, float(bounds[passed - 1]), level)


def _certified_pick(accepted: np.ndarray, errors: np.ndarray, target: float,
                    guarantee: float) -> tuple[int | None, dict]:
    """The larger coverage of the two searches, each with half of the error budget 1 - guarantee."""
    best, about = None, {"accuracy_lower_bound": None, "certified_by": None, "bound_level": None}
    for name, search in (("binary search", _binary_search_pick), ("fixed sequence", _fixed_sequence_pick)):
        pick, bound, level = search(accepted, errors, target, (1 - guarantee) / 2)
        if pick is not None and (best is None or pick > best):
            best, about = pick, {"accuracy_lower_bound": bound, "certified_by": name, "bound_level": level}
    return best, about


def choose_referral_threshold(confidence: Any, correct: Any, target_accuracy: float | None = None,
                              target_coverage: float | None = None, guarantee: float | None = None) -> dict[str, Any]:
    """The confidence threshold meeting exactly one target on this (calibration) data.

    With ``target_accuracy`` the lowest threshold, i.e. the largest coverage, whose accepted set
    (confidence >= threshold) is at least that accurate here; with ``guarantee`` (e.g. 0.95) the
    largest coverage that is certified instead: the accepted set's accuracy lower bound reaches the
    target, by either of two searches (module docstring). When none qualifies, ``reachable`` is
    False, ``threshold`` is +inf (refer every case), ``coverage`` 0 and ``accuracy`` None. With
    ``target_coverage`` the highest threshold accepting at least that fraction of the cases (more
    only where ties force it).

    Returns a JSON-serialisable dict: ``threshold``, ``coverage``, ``accuracy``, ``n_accepted``,
    ``n``, ``reachable``, ``target_accuracy``, ``target_coverage`` and, with a guarantee,
    ``guarantee``, ``accuracy_lower_bound``, ``bound_level`` (the confidence of that bound) and
    ``certified_by`` (which search found it). Note that +inf is written as ``Infinity`` by
    :func:`json.dumps`.
    """
    if (target_accuracy is None) == (target_coverage is None):
        raise ValueError("give exactly one of target_accuracy and target_coverage")
    if target_coverage is None:
        check_target("target_accuracy", target_accuracy)
    else:
        check_target("target_coverage", target_coverage)
    if guarantee is not None and (target_accuracy is None or isinstance(guarantee, bool)
                                  or not isinstance(guarantee, (int, float, np.number)) or not 0 < guarantee < 1):
        raise ValueError(f"guarantee must be a probability in (0, 1) and goes with target_accuracy, got {guarantee!r}")
    conf, ok = _check_inputs(confidence, correct)
    n = len(conf)
    accepted, errors, thresholds = _operating_points(conf, ok)
    slack = 1e-9 * accepted
    extra: dict[str, Any] = {}
    if target_accuracy is not None and guarantee is not None:
        pick, about = _certified_pick(accepted, errors, target_accuracy, guarantee)
        extra = {"guarantee": float(guarantee), **about}
    elif target_accuracy is not None:
        feasible = np.flatnonzero(errors <= (1 - target_accuracy) * accepted + slack)
        pick = feasible[-1] if len(feasible) else None
    else:
        pick = np.flatnonzero(accepted >= target_coverage * n - 1e-9)[0]
    result: dict[str, Any] = {"threshold": math.inf, "coverage": 0.0, "accuracy": None,
                              "n_accepted": 0, "n": int(n), "reachable": pick is not None,
                              "target_accuracy": target_accuracy, "target_coverage": target_coverage, **extra}
    if pick is not None:
        k = int(accepted[pick])
        result.update(threshold=float(thresholds[pick]), coverage=k / n,
                      accuracy=1 - float(errors[pick]) / k, n_accepted=k)
    return result


def choose_coverage_threshold(confidence: Any, correct: Any, decidable: Any, target: float) -> dict[str, Any]:
    """The highest threshold deciding at least `target` of all the cases, counting only the `decidable`
    ones (those whose conformal set names one class: the others are referred whatever their confidence).
    Where fewer are decidable, the threshold is 0, so every decidable case is decided (here and on new
    cases), and ``reachable`` is False. Returns the keys of :func:`choose_referral_threshold`."""
    check_target("target_coverage", target)
    conf, ok = _check_inputs(confidence, correct)
    decidable = np.asarray(decidable, dtype=bool)
    needed = max(1, math.ceil(target * len(conf) - 1e-9))
    if not decidable.any():
        return {"threshold": math.inf, "coverage": 0.0, "accuracy": None, "n_accepted": 0, "n": len(conf),
                "reachable": False, "target_accuracy": None, "target_coverage": float(target)}
    enough = int(decidable.sum()) >= needed
    share = needed / decidable.sum() if enough else 1.0
    referral = choose_referral_threshold(conf[decidable], ok[decidable], target_coverage=share)
    return {**referral, "threshold": referral["threshold"] if enough else 0.0, "target_coverage": float(target),
            "reachable": enough}


def accuracy_at_coverage(confidence: Any, correct: Any,
                         coverages: Sequence[float] = (0.8, 0.9, 0.95)) -> dict[str, float]:
    """Accuracy of the most confident cases at each coverage, keyed like ``"0.9"``.

    Each entry accepts the smallest top-confidence set covering at least that fraction (ties can
    make it a little larger), as ``choose_referral_threshold(target_coverage=...)`` does.
    """
    return {f"{c:g}": choose_referral_threshold(confidence, correct, target_coverage=c)["accuracy"]
            for c in coverages}


def refer(confidence: Any, threshold: float) -> np.ndarray:
    """Boolean (N,) mask, True where a case goes to a specialist (confidence < threshold)."""
    conf = check_scores(confidence)
    t = float(threshold)
    if math.isnan(t):
        raise ValueError("threshold is NaN")
    return conf < t
