"""Mahalanobis feature distance: near for in-distribution features, far for shifted ones."""
from __future__ import annotations

import numpy as np
import pytest

from dualfuse.uncertainty.feature_distance import FeatureDistance
from dualfuse.uncertainty.ood import ood_auroc


def _gaussian(rng, n, shift, dims=64):
    labels = rng.integers(0, 2, n)
    # The shift alternates in sign, so it leads away from both class means (not from one to the other).
    features = rng.normal(size=(n, dims)) + labels[:, None] * 2.0 + shift * (-1.0) ** np.arange(dims)
    return features, labels


def test_shifted_features_score_higher_than_held_out_in_distribution():
    rng = np.random.default_rng(0)
    train, y = _gaussian(rng, 200, 0.0)
    inside, _ = _gaussian(rng, 200, 0.0)
    outside, _ = _gaussian(rng, 200, 1.5)
    detector = FeatureDistance().fit(train, y)
    assert ood_auroc(detector.score(inside), detector.score(outside)) > 0.99


def test_distance_is_zero_at_a_class_mean_and_fewer_cases_than_dimensions_still_fit():
    rng = np.random.default_rng(1)
    train, y = _gaussian(rng, 40, 0.0, dims=128)  # N < F: the shrunk covariance is still invertible
    detector = FeatureDistance().fit(train, y)
    assert detector.score(detector.means_) == pytest.approx(np.zeros(2), abs=1e-9)
    assert np.isfinite(detector.score(train)).all()


def test_bad_shapes_fail_in_one_line():
    with pytest.raises(ValueError, match="not fitted"):
        FeatureDistance().score(np.zeros((2, 3)))
    detector = FeatureDistance().fit(np.random.default_rng(0).normal(size=(10, 3)), np.arange(10) % 2)
    with pytest.raises(ValueError, match=r"features must be \(N, 3\)"):
        detector.score(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="cannot fit 2 class means"):
        FeatureDistance().fit(np.zeros((2, 3)), np.array([0, 1]))
