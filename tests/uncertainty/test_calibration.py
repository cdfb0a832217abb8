"""Calibration: ECE/ACE on hand-made sets, closed-form NLL and Brier, temperature scaling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

from dualfuse.uncertainty import (
    adaptive_calibration_error,
    apply_temperature,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    mc_probs_with_temperature,
    negative_log_likelihood,
)
from dualfuse.uncertainty.calibration import T_BOUNDS


def _binary(confidences, correct):
    """Two-class probs whose top class has the given confidence, labels right or wrong as given."""
    conf = np.asarray(confidences, dtype=float)
    probs = np.c_[conf, 1 - conf]
    y = np.where(np.asarray(correct, dtype=bool), 0, 1)
    return probs, y


def test_perfectly_calibrated_set_has_zero_ece():
    # 10 cases at confidence 0.8 with 8 right, 10 at 0.6 with 6 right.
    probs, y = _binary([0.8] * 10 + [0.6] * 10, [1] * 8 + [0] * 2 + [1] * 6 + [0] * 4)
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.0, abs=1e-12)
    assert adaptive_calibration_error(probs, y, n_bins=2) == pytest.approx(0.0, abs=1e-12)


def test_overconfident_set_has_known_ece():
    # Bin (0.9, 1]: 4 cases at 0.95 with 2 right -> gap 0.45; bin (0.6, 0.7]: 6 cases at 0.7
    # with 3 right -> gap 0.2. ECE = 0.4 * 0.45 + 0.6 * 0.2 = 0.30.
    probs, y = _binary([0.95] * 4 + [0.7] * 6, [1, 1, 0, 0, 1, 1, 1, 0, 0, 0])
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.30)
    # One bin: |mean accuracy - mean confidence| = |0.5 - 0.8| = 0.3 as well.
    assert expected_calibration_error(probs, y, n_bins=1) == pytest.approx(0.30)


def test_equal_width_bins_are_right_closed():
    # Confidence exactly 0.7 belongs to (0.6, 0.7], not (0.7, 0.8]: with one case at 0.7 (right)
    # and one at 0.75 (wrong), bins give |1 - 0.7| / 2 + |0 - 0.75| / 2.
    probs, y = _binary([0.7, 0.75], [1, 0])
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx((0.3 + 0.75) / 2)


def test_adaptive_bins_hold_equal_counts():
    # Sorted confidences 0.55, 0.6 | 0.9, 0.95 (2 bins of 2): gaps |0.5 - 0.575|, |1 - 0.925|.
    probs, y = _binary([0.9, 0.55, 0.95, 0.6], [1, 1, 1, 0])
    assert adaptive_calibration_error(probs, y, n_bins=2) == pytest.approx(0.075)
    # More bins than cases: each case is its own bin.
    assert adaptive_calibration_error(probs, y, n_bins=10) == pytest.approx(
        np.mean([0.1, 0.45, 0.05, 0.6]))


def test_nll_and_brier_closed_form():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
    y = np.array([0, 1])
    assert negative_log_likelihood(probs, y) == pytest.approx(-(np.log(0.7) + np.log(0.25)) / 2)
    # (0.3^2 + 0.2^2 + 0.1^2 + 0.5^2 + 0.75^2 + 0.25^2) / 2 = (0.14 + 0.875) / 2
    assert brier_score(probs, y) == pytest.approx(0.5075)
    assert negative_log_likelihood(probs, y) == pytest.approx(log_loss(y, probs, labels=[0, 1, 2]))
    assert brier_score(probs, y) == pytest.approx(brier_score_loss(y, probs, labels=[0, 1, 2]))


def test_nll_of_a_zero_probability_is_finite():
    assert np.isfinite(negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])))


def test_report_is_json_ready_and_consistent():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=200)
    y = rng.integers(0, 3, 200)
    report = calibration_report(probs, y, n_bins=5)
    json.dumps(report)
    assert report["ece"] == pytest.approx(expected_calibration_error(probs, y, 5))
    assert report["ace"] == pytest.approx(adaptive_calibration_error(probs, y, 5))
    bins = report["reliability"]
    assert len(bins) == 5 and sum(b["count"] for b in bins) == 200
    assert bins[0]["count"] == 0 and bins[0]["accuracy"] is None  # confidence >= 1/3 > 0.2
    filled = [b for b in bins if b["count"]]
    assert all(b["lower"] < b["mean_confidence"] <= b["upper"] for b in filled)
    ece = sum(b["count"] * abs(b["accuracy"] - b["mean_confidence"]) for b in filled) / 200
    assert report["ece"] == pytest.approx(ece)


def test_temperature_scaling_recovers_true_temperature():
    rng = np.random.default_rng(0)
    n, c, true_t = 4000, 5, 3.0
    logits = rng.normal(scale=2.0, size=(n, c))
    u = rng.uniform(size=(n, 1))
    y = (u > np.cumsum(apply_temperature(logits, 1.0), axis=1)).sum(axis=1)
    overconfident = true_t * logits  # softmax(overconfident / 3) is the true distribution
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(true_t, rel=0.05)
    before = negative_log_likelihood(apply_temperature(overconfident, 1.0), y)
    after = negative_log_likelihood(apply_temperature(overconfident, t), y)
    assert after < before - 0.1
    assert fit_temperature(torch.tensor(overconfident), torch.tensor(y)) == t  # deterministic


def _sampled(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): T = 1 is the true temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, c))
    return logits, (rng.uniform(size=(n, 1)) > np.cumsum(apply_temperature(logits, 1.0), axis=1)).sum(axis=1)


def test_a_calibration_split_with_every_case_right_keeps_a_finite_temperature():
    """20 calibration cases, all right (common on a small, easy set): the NLL alone keeps falling as
    T -> 0, so plain temperature scaling runs to its bound and calls wrong cases certain; the prior on
    log T keeps T where the held-out cases are far better served."""
    logits, y = _sampled(4000, 3, seed=0)
    cal = np.flatnonzero(logits.argmax(axis=1) == y)[:20]
    rest = np.setdiff1d(np.arange(len(y)), cal)
    plain = fit_temperature(logits[cal], y[cal], prior_sd=None)
    t = fit_temperature(logits[cal], y[cal])
    assert plain == pytest.approx(T_BOUNDS[0])
    assert 0.1 < t < 1.0
    held_out = {temperature: negative_log_likelihood(apply_temperature(logits[rest], temperature), y[rest])
                for temperature in (plain, t)}
    assert held_out[t] < held_out[plain] / 3
    wrong = logits[rest].argmax(axis=1) != y[rest]
    assert apply_temperature(logits[rest][wrong], plain).max(axis=1).mean() > 0.99  # wrong cases called certain
    assert apply_temperature(logits[rest][wrong], t).max(axis=1).mean() < 0.95


def test_the_prior_leaves_a_large_calibration_split_alone():
    logits, y = _sampled(4000, 5, seed=3)
    overconfident = 3.0 * logits
    assert fit_temperature(overconfident, y) == pytest.approx(fit_temperature(overconfident, y, prior_sd=None), rel=0.005)
    with pytest.raises(ValueError, match="prior_sd must be a finite number > 0 or None"):
        fit_temperature(overconfident, y, prior_sd=0.0)


def test_temperature_fit_on_mc_samples():
    rng = np.random.default_rng(2)
    n, c = 3000, 4
    logits = rng.normal(scale=2.0, size=(n, c))
    y = (rng.uniform(size=(n, 1)) > np.cumsum(apply_temperature(logits, 1.0), axis=1)).sum(axis=1)
    # One sample: the same fit as 2-D logits.
    assert fit_temperature(4 * logits[None], y) == pytest.approx(fit_temperature(4 * logits, y))
    # Noisy overconfident samples: the fitted T minimises the NLL of the averaged probabilities.
    samples = 4 * (logits + rng.normal(scale=0.3, size=(5, n, c)))
    t = fit_temperature(samples, y)

    def nll(temperature):
        return negative_log_likelihood(mc_probs_with_temperature(samples, temperature).mean(0), y)

    assert 2 < t < 6
    assert nll(t) <= min(nll(0.95 * t), nll(1.05 * t), nll(1.0))


def test_mc_temperature_applies_per_sample():
    rng = np.random.default_rng(1)
    sample_logits = rng.normal(size=(4, 6, 3))
    probs = mc_probs_with_temperature(sample_logits, 2.0)
    assert probs.shape == (4, 6, 3)
    np.testing.assert_allclose(probs[2], apply_temperature(sample_logits[2], 2.0))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0)


@pytest.mark.parametrize("call, match", [
    (lambda: expected_calibration_error(np.full((2, 2), 0.5), [0, 2]), "outside 0..1"),
    (lambda: expected_calibration_error(np.full((2, 2), 0.5), [0]), "1 labels but probs has 2"),
    (lambda: expected_calibration_error(np.full((2, 2), 0.5), [0, 1], n_bins=0), "n_bins"),
    (lambda: brier_score(np.array([[2.0, -1.0]]), [0]), "not logits"),
    (lambda: fit_temperature(np.zeros(3), [0, 1, 0]), "2-D \\(N, C\\) or 3-D"),
    (lambda: fit_temperature(np.array([[0.0, np.inf]]), [0]), "NaN/inf"),
    (lambda: apply_temperature(np.zeros((2, 2)), 0.0), "temperature must be"),
    (lambda: apply_temperature(np.zeros((2, 2)), -1.0), "temperature must be"),
    (lambda: mc_probs_with_temperature(np.zeros((2, 2)), 1.0), "3-D"),
])
def test_bad_inputs_raise_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
