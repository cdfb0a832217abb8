"""Selective prediction: risk-coverage by hand, AURC, accuracy at coverage, referral thresholds."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dualfuse.uncertainty import accuracy_at_coverage, aurc, choose_referral_threshold, refer, risk_coverage_curve

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


@pytest.mark.parametrize("call, match", [
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
