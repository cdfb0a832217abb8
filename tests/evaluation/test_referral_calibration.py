"""The referral threshold for a target accuracy is chosen, and certified, on the cases the model decides.

A case is decided only when its confidence reaches the threshold *and* its conformal set names one
class, so the accuracy promised on the calibration split must be the accuracy of exactly those cases.
"""
from __future__ import annotations

import numpy as np
import pytest

from dualfuse.evaluation.predictions import Predictions, Predictor, conformal_sets, refer_flags
from dualfuse.evaluation.uncertainty_report import calibrate, referral_promise, task_report
from dualfuse.uncertainty.selective import accuracy_lower_bound


def _ambiguous_predictions(n: int = 600, seed: int = 0) -> Predictions:
    """3 classes; for a third of the cases a second class is almost as likely as the true one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += rng.uniform(0, 5, n)
    ambiguous, other = rng.random(n) < 0.35, (y + 1) % 3
    logits[ambiguous, other[ambiguous]] = logits[ambiguous, y[ambiguous]] + rng.normal(0, 0.3, ambiguous.sum())
    return Predictions([str(i) for i in range(n)], [""] * n, {"label": logits}, labels={"label": y})


@pytest.mark.parametrize("guarantee", [0.95, None])
def test_the_promise_is_about_the_decided_cases(guarantee):
    predictions = _ambiguous_predictions()
    stored = calibrate(predictions, "label", Predictor(1, 0), target_accuracy=0.9, guarantee=guarantee)
    probs = predictions.using(Predictor(1, 0), {"label": stored["temperature"]}).probs("label")
    referral, right = stored["referral"], probs.argmax(axis=1) == predictions.labels["label"]
    decided = ~refer_flags(probs, stored)
    singleton = conformal_sets(probs, stored).sum(axis=1) == 1
    assert referral["reachable"] and referral["n"] == 600 and referral["n_decidable"] == singleton.sum()
    assert decided.sum() == referral["n_accepted"] and referral["coverage"] == pytest.approx(decided.mean())
    assert right[decided].mean() == pytest.approx(referral["accuracy"]) and right[decided].mean() >= 0.9
    if guarantee:
        assert referral["accuracy_lower_bound"] == pytest.approx(
            accuracy_lower_bound(int(right[decided].sum()), int(decided.sum()), referral["bound_level"]))
    else:  # read off the calibration cases: confident cases with two-class sets exist and are left out
        assert (~singleton & (probs.max(axis=1) >= referral["threshold"])).any()


def test_no_decidable_case_refers_everything():
    predictions = _ambiguous_predictions(n=200)
    stored = calibrate(predictions, "label", Predictor(1, 0), target_accuracy=0.9, guarantee=0.95, alpha=0.001)
    # alpha = 0.001 on 200 cases: qhat is +inf, every set holds all three classes.
    assert stored["referral"]["n_decidable"] == 0 and not stored["referral"]["reachable"]
    assert stored["referral"]["threshold"] == float("inf")


def test_a_certified_threshold_says_what_it_promises_in_one_line():
    stored = calibrate(_ambiguous_predictions(), "label", Predictor(1, 0), target_accuracy=0.9, guarantee=0.95)
    referral = stored["referral"]
    line = referral_promise("label", referral)
    assert line.startswith(f"label: refer below {referral['threshold']:.3f}; with 95% probability the cases the model "
                           "decides are at least 0.90 accurate (the ")
    assert f"{referral['accuracy_lower_bound']:.3f} with 97.50% confidence" in line
    plain = calibrate(_ambiguous_predictions(), "label", Predictor(1, 0), target_accuracy=0.9)["referral"]
    unreachable = {**referral, "reachable": False, "accuracy_lower_bound": None}
    assert referral_promise("label", plain) is None and referral_promise("label", unreachable) is None


def test_a_target_coverage_is_the_share_of_cases_the_model_decides():
    predictions = _ambiguous_predictions()
    stored = calibrate(predictions, "label", Predictor(1, 0), target_coverage=0.7, alpha=0.2)
    probs = predictions.using(Predictor(1, 0), {"label": stored["temperature"]}).probs("label")
    referral, decided = stored["referral"], ~refer_flags(probs, stored)
    singleton = conformal_sets(probs, stored).sum(axis=1) == 1
    assert referral["reachable"] and referral["n_decidable"] == singleton.sum() > 0.7 * 600
    assert decided.sum() == referral["n_accepted"] and decided.mean() >= 0.7
    # The highest such threshold: the next decidable case up would leave fewer than 70% decided.
    above = np.sort(probs.max(axis=1)[singleton & (probs.max(axis=1) > referral["threshold"])])
    assert (singleton & (probs.max(axis=1) >= above[0])).mean() < 0.7
    # Chosen on confidence alone, the conformal filter would have decided fewer than asked in this example.
    on_confidence = np.quantile(probs.max(axis=1), 0.3, method="lower")
    assert (singleton & (probs.max(axis=1) >= on_confidence)).mean() < 0.7


def test_a_coverage_beyond_the_one_class_sets_decides_all_of_them_and_warns():
    predictions = _ambiguous_predictions()
    stored = calibrate(predictions, "label", Predictor(1, 0), target_coverage=0.95, alpha=0.1)
    probs = predictions.using(Predictor(1, 0), {"label": stored["temperature"]}).probs("label")
    referral, singleton = stored["referral"], conformal_sets(probs, stored).sum(axis=1) == 1
    assert singleton.mean() < 0.95 and not referral["reachable"]
    assert (~refer_flags(probs, stored) == singleton).all() and referral["n_accepted"] == singleton.sum()
    warnings = task_report({"val": predictions}, "label", stored, alpha=0.1)["warnings"]
    assert warnings == [f"only {singleton.sum()} of the 600 val cases have a one-class conformal set, so the model "
                        f"decides {singleton.mean():.1%} of cases, not the 95% asked: raise --alpha (smaller sets) "
                        "or lower --target-coverage"]
    nothing = calibrate(_ambiguous_predictions(n=200), "label", Predictor(1, 0), target_coverage=0.9, alpha=0.001)
    assert nothing["referral"]["threshold"] == float("inf") and nothing["referral"]["n_accepted"] == 0


@pytest.mark.parametrize(("n", "alpha", "needed", "at_least"), [(8, 0.1, 9, "0.112"), (2, 0.3, 3, "0.334")])
def test_too_few_calibration_cases_for_the_conformal_level_say_so(n, alpha, needed, at_least):
    """alpha < 1 / (n + 1): every conformal set holds every class and every case is referred; the warning
    names the cause (too few cases) and the smallest alpha that works, rounded up so that it does."""
    predictions = _ambiguous_predictions(n=n)
    for target in ({"target_coverage": 0.9}, {"target_accuracy": 0.9, "guarantee": 0.95}):
        stored = calibrate(predictions, "label", Predictor(1, 0), alpha=alpha, **target)
        assert stored["conformal"]["lac"]["qhat"] == float("inf") and stored["referral"]["n_accepted"] == 0
        warnings = task_report({"val": predictions}, "label", stored, alpha=alpha)["warnings"]
        assert warnings == [f"the {n} val cases are too few for {1 - alpha:.0%} conformal sets (it takes at least "
                            f"{needed}): every set names every class, so every case is referred: calibrate on more "
                            f"cases, or raise --alpha to at least {at_least}"]
        raised = calibrate(predictions, "label", Predictor(1, 0), alpha=float(at_least), **target)
        assert raised["conformal"]["lac"]["qhat"] < float("inf")
    enough = calibrate(_ambiguous_predictions(n=needed), "label", Predictor(1, 0), alpha=alpha, target_coverage=0.9)
    assert enough["conformal"]["lac"]["qhat"] < float("inf")  # `needed` cases are enough


def test_a_small_calibration_split_says_how_far_its_conformal_coverage_may_swing():
    """50 cases: the 90% sets of one such split cover between .83 and .96 of new cases (90% of draws);
    600 cases: within 5 points of 90%, no warning, the spread still stored."""
    small = _ambiguous_predictions(n=50)
    stored = calibrate(small, "label", Predictor(1, 0), alpha=0.1, target_coverage=0.5)
    report = task_report({"val": small}, "label", stored, alpha=0.1)
    assert report["conformal_spread"] == {"n_cal": 50, "level": 0.9, "low": pytest.approx(0.826, abs=1e-3),
                                          "high": pytest.approx(0.960, abs=1e-3)}
    assert report["warnings"][0] == ("with 50 val cases the 90% conformal sets cover between 0.83 and 0.96 of new "
                                     "cases (90% of calibration draws; 90% only on average over them): calibrate on "
                                     "at least 110 cases for sets that cover at least 0.85")
    large = _ambiguous_predictions(n=600)
    stored = calibrate(large, "label", Predictor(1, 0), alpha=0.1, target_coverage=0.5)
    report = task_report({"val": large}, "label", stored, alpha=0.1)
    assert report["warnings"] == [] and report["conformal_spread"]["low"] > 0.85
