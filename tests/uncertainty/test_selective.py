"""Selective prediction: risk-coverage by hand, AURC, accuracy at coverage, referral thresholds."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dualfuse.uncertainty import (
    accuracy_at_coverage,
    aurc,
    choose_referral_threshold,
    refer,
    risk_coverage_curve,
    selective,
)
from dualfuse.uncertainty.selective import accuracy_lower_bound

# Sorted by confidence: right, right, wrong, right, wrong.
CONF = np.array([0.6, 0.95, 0.7, 0.9, 0.8])
CORRECT = np.array([False, True, True, True, False])


def test_risk_coverage_curve_by_hand():
    curve = risk_coverage_curve(CONF, CORRECT)
    json.dumps(curve)
    assert curve["coverage"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert curve["risk"] == pytest.approx([0, 0, 1 / 3, 1 / 4, 2 / 5])
    assert curve["thresholds"] == pytest.approx([0.95, 0.9, 0.8, 0.7, 0.6])


def test_aurc_by_hand():
    # Mean of the risks of the k most confident, k = 1..5.
    assert aurc(CONF, CORRECT) == pytest.approx((0 + 0 + 1 / 3 + 1 / 4 + 2 / 5) / 5)
    assert aurc(CONF, np.ones(5, dtype=bool)) == 0.0
    # A perfect ranking (all errors least confident) beats the reverse ranking.
    assert aurc([0.9, 0.8, 0.1], [1, 1, 0]) < aurc([0.1, 0.8, 0.9], [1, 1, 0])


def test_tied_confidences_form_one_operating_point():
    curve = risk_coverage_curve([0.9, 0.5, 0.5, 0.5], [1, 1, 0, 0])
    assert curve["coverage"] == [0.25, 1.0]
    assert curve["risk"] == [0.0, 0.5]
    # Area of the step curve: 0 * 0.25 + 0.5 * 0.75; the order of the ties does not matter.
    assert aurc([0.9, 0.5, 0.5, 0.5], [1, 1, 0, 0]) == pytest.approx(0.375)
    assert aurc([0.9, 0.5, 0.5, 0.5], [1, 0, 0, 1]) == pytest.approx(0.375)


def test_accuracy_at_coverage():
    result = accuracy_at_coverage(CONF, CORRECT, coverages=(0.4, 0.6, 0.7, 1.0))
    assert result == pytest.approx({"0.4": 1.0, "0.6": 2 / 3, "0.7": 3 / 4, "1": 3 / 5})


def test_referral_threshold_for_target_accuracy():
    chosen = choose_referral_threshold(CONF, CORRECT, target_accuracy=0.75)
    # The widest accepted set with accuracy >= 0.75 is the top 4 (3/4 right); top 5 is 3/5.
    assert chosen["reachable"] and chosen["threshold"] == 0.7
    assert chosen["coverage"] == 0.8 and chosen["accuracy"] == 0.75 and chosen["n_accepted"] == 4
    accepted = ~refer(CONF, chosen["threshold"])
    assert CORRECT[accepted].mean() >= 0.75 and accepted.mean() == chosen["coverage"]
    strict = choose_referral_threshold(CONF, CORRECT, target_accuracy=1.0)
    assert strict["threshold"] == 0.9 and strict["coverage"] == 0.4


def test_referral_threshold_for_target_coverage():
    chosen = choose_referral_threshold(CONF, CORRECT, target_coverage=0.5)
    # At least half: the top 3 (0.95, 0.9, 0.8).
    assert chosen["threshold"] == 0.8 and chosen["coverage"] == 0.6
    assert refer(CONF, chosen["threshold"]).tolist() == [True, False, True, False, False]


def test_unreachable_accuracy_refers_everything():
    chosen = choose_referral_threshold([0.9, 0.8], [False, True], target_accuracy=0.9)
    assert chosen["reachable"] is False and chosen["threshold"] == math.inf
    assert chosen["coverage"] == 0.0 and chosen["accuracy"] is None
    assert refer(torch.tensor([0.9, 0.8, 1.0]), chosen["threshold"]).all()
    json.dumps(chosen)


def test_referral_threshold_reaches_target_on_random_data():
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=500)
    correct = rng.uniform(size=500) < conf  # more confident cases are right more often
    for target in (0.7, 0.8, 0.9):
        chosen = choose_referral_threshold(conf, correct, target_accuracy=target)
        accepted = ~refer(conf, chosen["threshold"])
        assert correct[accepted].mean() >= target
        assert accepted.mean() == pytest.approx(chosen["coverage"])


def test_accuracy_lower_bound_is_clopper_pearson():
    # n of n right: the bound solves p^n = 1 - level (59 right of 59 is the smallest n certifying .95 at 95%).
    assert accuracy_lower_bound(59, 59, 0.95) == pytest.approx(0.05 ** (1 / 59))
    assert accuracy_lower_bound(58, 58, 0.95) < 0.95 <= accuracy_lower_bound(59, 59, 0.95)
    assert accuracy_lower_bound(0, 0, 0.95) == 0.0 and accuracy_lower_bound(0, 10, 0.95) == 0.0
    assert accuracy_lower_bound(90, 100, 0.95) < accuracy_lower_bound(90, 100, 0.5) < 0.9


def test_guaranteed_threshold_certifies_what_it_accepts_and_refers_more():
    # 600 most confident cases all right, the next 400 right half the time.
    conf = np.linspace(1, 0.5, 1000)
    correct = np.r_[np.ones(600, bool), np.arange(400) % 2 == 0]
    plain = choose_referral_threshold(conf, correct, target_accuracy=0.95)
    safe = choose_referral_threshold(conf, correct, target_accuracy=0.95, guarantee=0.95)
    assert plain["reachable"] and safe["reachable"] and safe["coverage"] < plain["coverage"]
    k = safe["n_accepted"]
    assert safe["certified_by"] in ("binary search", "fixed sequence") and safe["accuracy_lower_bound"] >= 0.95
    assert safe["bound_level"] >= 0.975  # each search has half of the 5% error budget
    assert safe["accuracy_lower_bound"] == pytest.approx(accuracy_lower_bound(int(correct[:k].sum()), k, safe["bound_level"]))
    # The larger of the two searches' picks, each with half of the budget.
    accepted, errors, _ = selective._operating_points(conf, correct)
    picks = [search(accepted, errors, 0.95, 0.025)[0]
             for search in (selective._binary_search_pick, selective._fixed_sequence_pick)]
    assert k == max(int(accepted[pick]) for pick in picks if pick is not None)
    json.dumps(safe)


def test_fixed_sequence_certifies_a_small_calibration_set_the_binary_search_cannot():
    # 100 calibration cases, the 60 most confident right, then every other one: SGR's 7 tests at level
    # 1 - 0.025 / 7 need 54 of 54 right at some midpoint and find none; the fixed sequence (each test at
    # 97.5%) starts at 36 cases (0.9 ** 36 <= 0.025) and walks on while the bound stays at 0.9.
    conf = np.linspace(1, 0.5, 100)
    correct = np.r_[np.ones(60, bool), np.arange(40) % 2 == 0]
    accepted, errors, _ = selective._operating_points(conf, correct)
    assert selective._binary_search_pick(accepted, errors, 0.9, 0.025)[0] is None
    safe = choose_referral_threshold(conf, correct, target_accuracy=0.9, guarantee=0.95)
    k = safe["n_accepted"]
    assert safe["reachable"] and safe["certified_by"] == "fixed sequence" and safe["bound_level"] == pytest.approx(0.975)
    assert 60 <= k < 80 and accuracy_lower_bound(int(correct[:k].sum()), k, 0.975) >= 0.9
    assert accuracy_lower_bound(int(correct[:k + 1].sum()), k + 1, 0.975) < 0.9  # where the sequence stopped
    # The sequence stops at its first failure: one error among the 36 cases of its first test ends it
    # there, though the 60 most confident (59 right) would pass on their own.
    early_error = correct.copy()
    early_error[35] = False
    assert accuracy_lower_bound(59, 60, 0.975) >= 0.9
    assert not choose_referral_threshold(conf, early_error, target_accuracy=0.9, guarantee=0.95)["reachable"]


def test_fewest_cases_to_certify_a_target():
    # A perfect record of n cases has the lower bound (1 - level) ** (1 / n), each search at level 97.5%.
    assert selective.fewest_cases_to_certify(0.9) == 36 and selective.fewest_cases_to_certify(0.95) == 72
    assert 0.9 ** 36 <= 0.025 < 0.9 ** 35 and selective.fewest_cases_to_certify(1.0) == math.inf
    assert selective.fewest_cases_to_certify(0.9, guarantee=0.8) == 22  # 0.9 ** 22 <= 0.1


def test_too_few_calibration_cases_refer_everything_rather_than_promise():
    conf, correct = np.linspace(1, 0.5, 30), np.ones(30, bool)  # 30 of 30 right
    assert choose_referral_threshold(conf, correct, target_accuracy=0.95)["coverage"] == 1.0
    safe = choose_referral_threshold(conf, correct, target_accuracy=0.95, guarantee=0.95)
    assert not safe["reachable"] and safe["threshold"] == math.inf and safe["accuracy_lower_bound"] is None


def test_the_guarantee_holds_over_calibration_draws_where_the_plain_rule_does_not():
    """Confidence c ~ U(0.5, 1) and P(right | c) = c: the cases above a threshold t are (1 + t) / 2
    accurate, so a threshold for 90% accuracy fails exactly when t < 0.8. Over 300 calibration sets of
    200 cases the plain rule fails about half the time; the guaranteed one in at most 5%."""
    rng = np.random.default_rng(0)
    failures = {"plain": 0, "safe": 0}
    for _ in range(300):
        conf = rng.uniform(0.5, 1, 200)
        correct = rng.random(200) < conf
        for rule, guarantee in (("plain", None), ("safe", 0.95)):
            chosen = choose_referral_threshold(conf, correct, target_accuracy=0.9, guarantee=guarantee)
            failures[rule] += chosen["reachable"] and chosen["threshold"] < 0.8
    assert failures["plain"] > 90 and failures["safe"] <= 15, failures


@pytest.mark.parametrize("call, match", [
    (lambda: choose_referral_threshold(CONF, CORRECT, target_coverage=0.9, guarantee=0.95), "guarantee"),
    (lambda: choose_referral_threshold(CONF, CORRECT, target_accuracy=0.9, guarantee=1.0), "guarantee"),
    (lambda: choose_referral_threshold(CONF, CORRECT), "exactly one"),
    (lambda: choose_referral_threshold(CONF, CORRECT, 0.9, 0.9), "exactly one"),
    (lambda: choose_referral_threshold(CONF, CORRECT, target_accuracy=1.5), "target_accuracy"),
    (lambda: choose_referral_threshold(CONF, CORRECT, target_coverage=0), "target_coverage"),
    (lambda: aurc(CONF, CORRECT[:3]), "one flag per case"),
    (lambda: aurc(CONF, [0, 1, 2, 1, 0]), "0/1"),
    (lambda: aurc(np.ones((5, 2)), CORRECT), "1-D"),
    (lambda: aurc([], []), "no cases"),
    (lambda: risk_coverage_curve([0.5, np.nan], [1, 0]), "NaN"),
    (lambda: refer(CONF, float("nan")), "NaN"),
])
def test_bad_inputs_raise_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
