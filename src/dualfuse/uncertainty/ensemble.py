"""Ensemble MC dropout: K independently trained models, T MC-dropout samples each, K·T samples in all.

DRIFA-Net's "ensemble MC dropout" averages the predictive distribution over every member and every
dropout sample. (The authors' notebook averaged only the first member's samples; here the mean over
the first dimension of `ensemble_mc_probs` covers all K·T.)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from dualfuse.uncertainty.mc_dropout import _concat, mc_logits, sample_seeds, softmax_samples


def ensemble_mc_logits(models: Sequence[nn.Module], inputs, samples: int = 30, fast: bool = True,
                       seed: int | None = 0, chunk: int | None = None, cases: Sequence[int] | None = None):
    """Logits (K*T, B, C) (a dict task -> (K*T, B, C) for multitask models), member k in rows k*T..(k+1)*T-1.

    Every member gets its own T per-sample seeds, all derived from `seed` (None: from torch's RNG);
    with `cases` (one key per row), masks also depend on the case, never on the batch.
    """
    models = list(models)
    if not models:
        raise ValueError("an ensemble needs at least one model")
    seeds = sample_seeds(len(models) * samples, seed)
    return _concat([mc_logits(model, inputs, samples, fast, seeds[k * samples:(k + 1) * samples], chunk, cases)
                    for k, model in enumerate(models)])


def ensemble_mc_probs(models: Sequence[nn.Module], inputs, samples: int = 30, fast: bool = True,
                      seed: int | None = 0, chunk: int | None = None,
                      temperature: float | Mapping[str, float] | None = None):
    """Softmax probabilities of `ensemble_mc_logits`, after dividing by `temperature` (one, or one per task)."""
    return softmax_samples(ensemble_mc_logits(models, inputs, samples, fast, seed, chunk), temperature)
