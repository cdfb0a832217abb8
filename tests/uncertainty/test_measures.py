"""Uncertainty measures: closed-form entropies, the entropy split, disagreement and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dualfuse.uncertainty import MEASURES, entropy, uncertainty_measures

LOG2 = np.log(2.0)


def test_entropy_uniform_and_one_hot():
    assert entropy(np.full(5, 0.2)) == pytest.approx(np.log(5))
    assert entropy(np.array([0.0, 1.0, 0.0])) == 0.0  # 0 log 0 = 0, no NaN


def test_identical_samples_have_no_epistemic_uncertainty():
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]])
    m = uncertainty_measures(np.repeat(probs[None], 6, axis=0))
    assert list(m) == list(MEASURES)
    np.testing.assert_allclose(m["mean_probs"], probs)
    np.testing.assert_allclose(m["predictive_entropy"][:2], [np.log(4), 0.0])
    np.testing.assert_allclose(m["normalized_entropy"][:2], [1.0, 0.0])
    np.testing.assert_allclose(m["expected_entropy"], m["predictive_entropy"])
    np.testing.assert_allclose(m["mutual_information"], 0.0, atol=1e-12)  # mean rounding only
    np.testing.assert_allclose(m["std"], 0.0, atol=1e-15)
    np.testing.assert_array_equal(m["variation_ratio"], 0.0)


def test_two_disagreeing_one_hot_samples():
    # S=2, one case: the samples are sure of different classes -> all uncertainty is epistemic.
    m = uncertainty_measures(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))
    assert m["predictive_entropy"][0] == pytest.approx(LOG2)
    assert m["expected_entropy"][0] == 0.0
    assert m["mutual_information"][0] == pytest.approx(LOG2)
    np.testing.assert_allclose(m["std"], [[0.5, 0.5]])
    assert m["variation_ratio"][0] == 0.5


def test_aleatoric_case_and_torch_input():
    # Both samples say 50/50: total = aleatoric = log 2, epistemic 0.
    m = uncertainty_measures(torch.full((3, 1, 2), 0.5, dtype=torch.float32))
    assert m["expected_entropy"][0] == pytest.approx(LOG2)
    assert m["mutual_information"][0] == 0.0
    assert m["predictive_entropy"].dtype == np.float64


def test_variation_ratio_counts_votes_for_the_modal_class():
    # 5 samples, argmaxes 0, 0, 0, 1, 2 -> 3/5 agree with the mode.
    votes = [0, 0, 0, 1, 2]
    samples = np.full((5, 1, 3), 0.1)
    samples[np.arange(5), 0, votes] = 0.8
    assert uncertainty_measures(samples)["variation_ratio"][0] == pytest.approx(0.4)


def test_single_sample_and_2d_input_mean_s_equals_1():
    probs = np.array([[0.6, 0.4], [0.9, 0.1]])
    a, b = uncertainty_measures(probs[None]), uncertainty_measures(probs)
    for key in MEASURES:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["mutual_information"], 0.0)
    np.testing.assert_allclose(a["expected_entropy"], a["predictive_entropy"])


def test_mutual_information_never_negative_on_random_samples():
    rng = np.random.default_rng(0)
    samples = rng.dirichlet(np.ones(4), size=(8, 50))
    m = uncertainty_measures(samples)
    assert (m["mutual_information"] >= 0).all()
    np.testing.assert_allclose(m["predictive_entropy"],
                               m["expected_entropy"] + m["mutual_information"], atol=1e-12)
    assert ((m["normalized_entropy"] >= 0) & (m["normalized_entropy"] <= 1)).all()


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3, 4, 5)), "must be \\(S, N, C\\)"),
    (np.zeros((0, 3, 2)), "S=0"),
    (np.full((2, 3, 1), 1.0), "C >= 2"),
    (np.full((2, 3, 2), 2.0), "lie in \\[0, 1\\]"),
    (np.full((2, 3, 2), 0.2), "sum to 1"),
    (np.full((2, 3, 2), np.nan), "NaN"),
])
def test_bad_samples_raise_one_line_value_error(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        uncertainty_measures(bad)
    assert "\n" not in str(err.value)
