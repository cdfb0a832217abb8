"""Per-case uncertainty measures from Monte-Carlo-dropout or ensemble softmax samples.

``samples`` holds S softmax outputs per case, shaped (S, N, C). The predictive distribution is
their mean ``p̄``, and its entropy splits into two parts (Depeweg et al. 2018; Gal 2016):

* ``predictive_entropy``  H[p̄]: total uncertainty;
* ``expected_entropy``    mean_s H[p_s]: aleatoric, the noise every sample agrees on;
* ``mutual_information``  H[p̄] - mean_s H[p_s]: epistemic, the samples' disagreement (>= 0 by
  concavity of entropy; clipped at 0 against rounding).

Entropies are in nats with 0·log 0 = 0; ``normalized_entropy`` divides by log C so it lies in
[0, 1]. ``std`` is the per-class population standard deviation over samples (ddof=0) and
``variation_ratio`` is 1 - (number of samples whose argmax is the modal class) / S. With S = 1
(a deterministic model) the sample-based measures are 0 and the entropies coincide.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import entr

from dualfuse.validation import check_probs, to_numpy

__all__ = ["MEASURES", "entropy", "uncertainty_measures"]

MEASURES = ("mean_probs", "predictive_entropy", "normalized_entropy", "expected_entropy",
            "mutual_information", "std", "variation_ratio")
"""Keys of :func:`uncertainty_measures`, in order; all but ``mean_probs``/``std`` are (N,)."""


def entropy(probs: Any) -> np.ndarray:
    """Shannon entropy in nats over the last axis, with 0·log 0 = 0."""
    return entr(np.asarray(to_numpy(probs), dtype=np.float64)).sum(axis=-1)


def _check_samples(samples: Any) -> np.ndarray:
    s = to_numpy(samples)
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3:
        raise ValueError(f"samples must be (S, N, C) softmax samples or (N, C) probabilities, "
                         f"got shape {s.shape}")
    if s.shape[0] == 0:
        raise ValueError("no samples: samples has S=0")
    return check_probs(s.reshape(-1, s.shape[-1])).reshape(s.shape)


def uncertainty_measures(samples: Any) -> dict[str, np.ndarray]:
    """Per-case uncertainty from (S, N, C) softmax samples (an (N, C) array counts as S = 1).

    Returns a dict of float64 arrays keyed by ``MEASURES``: ``mean_probs`` and ``std`` are (N, C),
    the rest (N,).
    """
    s = _check_samples(samples)
    n_samples, _, n_classes = s.shape
    mean = s.mean(axis=0)
    predictive = entropy(mean)
    expected = entropy(s).mean(axis=0)
    votes = (s.argmax(axis=2)[..., None] == np.arange(n_classes)).sum(axis=0)
    return {
        "mean_probs": mean,
        "predictive_entropy": predictive,
        "normalized_entropy": predictive / np.log(n_classes),
        "expected_entropy": expected,
        "mutual_information": np.clip(predictive - expected, 0.0, None),
        "std": s.std(axis=0),
        "variation_ratio": 1.0 - votes.max(axis=1) / n_samples,
    }
