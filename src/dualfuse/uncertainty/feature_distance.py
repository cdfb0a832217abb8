"""Distance in feature space: a score for inputs unlike anything the model was calibrated on.

Entropy and mutual information only say how sure the model is between its own classes; a brain
MRI fed to a chest X-ray model can get a confident "pneumonia". The fused feature vector of such an
input lies far from every class seen in training. `FeatureDistance` is the Mahalanobis score of Lee
et al. (NeurIPS 2018): class means and one shared covariance of the fused features of
in-distribution cases (the calibration split), shrunk by Ledoit-Wolf because a few hundred cases
cannot estimate a full covariance of a few hundred dimensions; a case's score is its squared
distance to the nearest class mean (higher: more out of distribution).
"""
from __future__ import annotations

import numpy as np
from sklearn.covariance import LedoitWolf

from dualfuse.validation import to_numpy

__all__ = ["FeatureDistance"]


class FeatureDistance:
    """Fit on in-distribution features and labels, then `score` new features (scikit-learn style)."""

    def fit(self, features, labels) -> FeatureDistance:
        x = np.asarray(to_numpy(features), dtype=np.float64)
        y = np.asarray(to_numpy(labels))
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"features must be (N, F) with one label per row, got {x.shape} and {y.shape}")
        classes = np.unique(y)
        if len(x) <= len(classes):
            raise ValueError(f"{len(x)} cases cannot fit {len(classes)} class means and a covariance")
        self.classes_ = classes
        self.means_ = np.stack([x[y == c].mean(axis=0) for c in classes])
        centred = x - self.means_[np.searchsorted(classes, y)]
        self.precision_ = LedoitWolf(assume_centered=True).fit(centred).precision_
        return self

    def score(self, features) -> np.ndarray:
        """(N,) squared Mahalanobis distance to the nearest class mean."""
        if not hasattr(self, "means_"):
            raise ValueError("FeatureDistance is not fitted; call fit(features, labels) first")
        x = np.asarray(to_numpy(features), dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.means_.shape[1]:
            raise ValueError(f"features must be (N, {self.means_.shape[1]}), got {x.shape}")
        diffs = x[:, None, :] - self.means_[None]
        distances = np.einsum("ncf,fg,ncg->nc", diffs, self.precision_, diffs)
        return distances.min(axis=1)
