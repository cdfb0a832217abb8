"""Split conformal prediction: the quantile formula, scores by hand, coverage, nesting, bad inputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dualfuse.uncertainty import conformal_report, conformal_scores, conformal_threshold, prediction_sets
from dualfuse.uncertainty.conformal import coverage_spread, fewest_cases_for_coverage

PROBS = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.25, 0.25, 0.5]])


def _dirichlet_cases(n: int, n_classes: int = 5, seed: int = 0):
    """Exchangeable cases: the model's probabilities are a Dirichlet draw, the label is drawn
    from a sharpened version of them (so the model is informative but miscalibrated)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(n_classes, 0.5), size=n)
    true = probs ** 2 / (probs ** 2).sum(axis=1, keepdims=True)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(true, axis=1)).sum(axis=1)
    return probs, np.minimum(y, n_classes - 1)


def test_scores_by_hand():
    y = np.array([1, 1, 0])
    np.testing.assert_allclose(conformal_scores(PROBS, y, "lac"), [0.7, 0.6, 0.75])
    # APS: mass of the classes strictly above the true one, plus its own; ties are not counted.
    np.testing.assert_allclose(conformal_scores(PROBS, y, "aps"), [0.8, 0.4, 0.75])
    # Randomised: the own term becomes U * p_y with U in [0, 1).
    rand = conformal_scores(PROBS, y, "aps", randomized=True, seed=3)
    assert ((rand >= [0.5, 0.0, 0.5]) & (rand <= [0.8, 0.4, 0.75])).all()
    np.testing.assert_array_equal(rand, conformal_scores(PROBS, y, "aps", randomized=True, seed=3))


def test_qhat_is_the_finite_sample_quantile():
    # n = 9 LAC scores 0.1..0.9; alpha = 0.2 -> level ceil(10 * 0.8) / 9 = 8/9 -> 8th smallest.
    p_true = 1 - np.arange(1, 10) / 10
    probs = np.c_[p_true, 1 - p_true]
    y = np.zeros(9, dtype=int)
    assert conformal_threshold(probs, y, alpha=0.2) == pytest.approx(0.8)
    # (10 * 0.8 is 8.000000000000002 in floating point; it must not round up to 9.)
    # alpha = 0.1 -> level ceil(9) / 9 = 1 -> the largest score.
    assert conformal_threshold(probs, y, alpha=0.1) == pytest.approx(0.9)
    # n = 1000 shuffled scores 0.001..1, alpha = 0.1 -> k = ceil(900.9) = 901 -> 0.901.
    p_true = 1 - np.random.default_rng(0).permutation(np.arange(1, 1001) / 1000)
    many = np.c_[p_true, 1 - p_true]
    assert conformal_threshold(many, np.zeros(1000, dtype=int)) == pytest.approx(0.901)
    # alpha < 1 / (n + 1) -> level > 1 -> infinite threshold, every class in every set.
    qhat = conformal_threshold(probs, y, alpha=0.05)
    assert qhat == math.inf
    assert prediction_sets(probs, qhat).all()


@pytest.mark.parametrize("score, randomized", [("lac", False), ("aps", False), ("aps", True)])
def test_coverage_on_a_large_exchangeable_sample(score, randomized):
    probs, y = _dirichlet_cases(20_000)
    alpha = 0.1
    report = conformal_report(probs[:10_000], y[:10_000], probs[10_000:], y[10_000:], alpha=alpha,
                              score=score, randomized=randomized, seed=0)
    assert report["coverage"] >= 1 - alpha - 0.015
    assert report["n_cal"] == 10_000 and report["n_test"] == 10_000
    if score == "lac" or randomized:  # continuous scores: coverage close to 1 - alpha, not above
        assert report["coverage"] <= 1 - alpha + 0.015
    assert 1 <= report["mean_set_size"] < 5
    assert sum(report["set_size_counts"]) == 10_000
    json.dumps(report)


def test_aps_sets_are_nested_in_qhat_and_follow_the_probability_order():
    probs, _ = _dirichlet_cases(300, seed=1)
    previous = np.zeros_like(probs, dtype=bool)
    for qhat in np.linspace(0, 1, 21):
        sets = prediction_sets(probs, qhat, "aps")
        assert (sets >= previous).all()  # growing qhat only adds classes
        previous = sets
        # A class is in the set whenever a more probable class of the same case is.
        for row, p in zip(sets, probs):
            if row.any():
                assert p[row].min() >= p[~row].max(initial=0)


def test_lac_sets_can_be_empty_unless_disallowed():
    probs = np.array([[0.4, 0.35, 0.25], [0.9, 0.05, 0.05]])
    sets = prediction_sets(probs, qhat=0.5, score="lac")  # keeps classes with p >= 0.5
    assert sets.tolist() == [[False, False, False], [True, False, False]]
    filled = prediction_sets(torch.tensor(probs), qhat=0.5, score="lac", allow_empty=False)
    assert filled.tolist() == [[True, False, False], [True, False, False]]
    report = conformal_report(probs, [0, 0], probs, [0, 0], alpha=0.5)
    assert set(report) >= {"qhat", "coverage", "mean_set_size", "alpha", "n_cal", "n_test",
                           "empty_fraction"}


@pytest.mark.parametrize("call, match", [
    (lambda: conformal_threshold(PROBS, [0, 1, 2], alpha=0), "alpha"),
    (lambda: conformal_threshold(PROBS, [0, 1, 2], alpha=1.0), "alpha"),
    (lambda: conformal_threshold(PROBS, [0, 1, 2], score="raps"), "score must be one of"),
    (lambda: conformal_threshold(PROBS, [0, 1]), "2 labels but probs has 3"),
    (lambda: prediction_sets(PROBS, float("nan")), "qhat is NaN"),
    (lambda: prediction_sets(PROBS * 3, 0.5), "\\[0, 1\\]"),
])
def test_bad_inputs_raise_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_coverage_spread_is_where_one_calibration_sets_coverage_lands():
    """Uniform scores: the coverage of the sets calibrated on one draw of n cases is P(s <= qhat) = qhat;
    over 4000 draws its 5th and 95th percentiles are the Beta quantiles coverage_spread gives."""
    rng = np.random.default_rng(0)
    n, alpha = 50, 0.1
    probs_of_true = rng.random((4000, n))
    covered = [conformal_threshold(np.c_[p, 1 - p], np.zeros(n, int), alpha) for p in probs_of_true]  # P(1 - p <= qhat)
    low, high = coverage_spread(n, alpha)
    assert np.quantile(covered, 0.05) == pytest.approx(low, abs=0.01)
    assert np.quantile(covered, 0.95) == pytest.approx(high, abs=0.01)
    assert low < 1 - alpha < high and coverage_spread(8, alpha) == (1.0, 1.0)  # 8 < 9: qhat infinite
    assert coverage_spread(1000, alpha)[0] > coverage_spread(100, alpha)[0]


def test_fewest_cases_for_coverage_is_where_the_low_end_stays_above_the_slack():
    needed = fewest_cases_for_coverage(0.1, slack=0.05)
    assert needed == 110
    assert coverage_spread(needed - 1, 0.1)[0] < 0.85
    assert all(coverage_spread(n, 0.1)[0] >= 0.85 for n in range(needed, needed + 300))
