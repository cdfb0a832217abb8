"""Dropout masks for the exported stochastic graph, drawn the way dualfuse's MC dropout draws them.

T samples of a batch of B cases are one call of the stochastic graph on T*B rows (row t*B + b is
sample t of case b): every state tensor is repeated T times along the batch, and mask k is the
concatenation over samples and cases of the row that (sample t, case b) draws for dropout call k.

Every (sample, case) pair owns a `torch.Generator`, so a case's masks depend only on the base
seed, the case and the sample, never on the batch: sample seeds come from the base seed, case keys
from the case id (SHA-256), and the pair's generator is seeded with a SHA-256 of both
(`DRAW_RULE` spells it out for other runtimes). Each call k then draws `bernoulli(1 - p_k)` of
shape (1, *shape_k) from it, in call order, divided by (1 - p_k). This is what
`dualfuse.uncertainty.mc_dropout` does for `predict`, `evaluate` and `serve` (tests/deploy check
that the exported graph reproduces their samples). A mask of ones is eval mode.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from dualfuse.deploy.graphs import DropoutCall

SEED_RANGE = 2**62

DRAW_RULE = {
    "sample_seeds": "seeds = torch.randint(2**62, (T,), generator=torch.Generator().manual_seed(seed)).tolist()",
    "case_key": "int.from_bytes(sha256(case_id.encode('utf-8')).digest()[:8], 'big') >> 1",
    "case_id": "dualfuse serve (and LoadedModel.predict_proba without ids): 'sha256:' + the first 32 hex digits of "
               "SHA-256 over the float32 bytes of the preprocessed input, modality by modality; dualfuse predict: "
               "the file's case id (its path below the folder given, or its file name)",
    "generator": "g[t][b] = torch.Generator().manual_seed(int.from_bytes(sha256(f'{seeds[t]}:{case_key[b]}'.encode())"
                 ".digest()[:8], 'big') >> 1)",
    "mask": "for each mask k in order: row[t][b] = torch.empty((1, *shape_per_case), dtype=torch.float32)"
            ".bernoulli_(1 - p, generator=g[t][b]) / (1 - p); input k = concatenation over t of the concatenation "
            "over b (T*B rows, row t*B + b)",
    "state": "every state input is repeated T times along the batch: state.repeat(T, 1, ...)",
    "output": "logits come back as T*B rows: reshape to (T, B, C), divide by the predictor's temperature, softmax, "
              "average over T; masks of ones give the deterministic (eval-mode) logits",
}


def sample_seeds(samples: int, seed: int) -> list[int]:
    """One seed per MC sample, derived from one base seed."""
    if samples < 1:
        raise ValueError(f"MC samples must be at least 1, got {samples}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randint(SEED_RANGE, (samples,), generator=generator).tolist()


def case_key(case_id: str) -> int:
    """A stable 63-bit key per case id."""
    return int.from_bytes(hashlib.sha256(str(case_id).encode("utf-8")).digest()[:8], "big") >> 1


def pair_seed(sample_seed: int, key: int) -> int:
    """The seed of one (sample, case) mask stream."""
    return int.from_bytes(hashlib.sha256(f"{sample_seed}:{key}".encode()).digest()[:8], "big") >> 1


def draw_masks(calls: Sequence[DropoutCall], case_ids: Sequence[str], samples: int, seed: int) -> list[torch.Tensor]:
    """The mask inputs for `samples` MC samples of these cases: one (samples*B, *shape) tensor per call."""
    keys = [case_key(c) for c in case_ids]
    generators = [[torch.Generator().manual_seed(pair_seed(s, k)) for k in keys] for s in sample_seeds(samples, seed)]
    masks = []
    for call in calls:
        rows = [torch.empty((1, *call.shape), dtype=torch.float32).bernoulli_(1 - call.p, generator=g)
                for per_case in generators for g in per_case]
        masks.append(torch.cat(rows).div_(1 - call.p))
    return masks


def repeat_rows(tensor: torch.Tensor, samples: int) -> torch.Tensor:
    """(B, ...) → (samples*B, ...), row t*B + b: the state of every sample."""
    return tensor.repeat(samples, *([1] * (tensor.dim() - 1)))
