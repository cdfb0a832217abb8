"""Monte Carlo dropout: T stochastic forward passes, naively or with the deterministic prefix run once.

Every model splits into `forward_deterministic(inputs) -> state` (everything before the first
dropout) and `forward_stochastic(state) -> logits`. Two samplers give T samples, stacked (T, B, C)
(a dict task -> (T, B, C) for multitask models):

* `mc_sample_naive`: T full forward passes, the reference.
* `mc_sample_fast`: the prefix once, then the stochastic rest once on the state repeated T times
  along the batch (sample t, case b is row t*B + b), in chunks of at most `chunk` samples.

Exactness by construction. Torch's own dropout draws one mask per call from one global stream, so
T passes of B rows and one pass of T*B rows would see different numbers. Here every sample t owns
a generator seeded with `seeds[t]` (derived from one base seed by `sample_seeds`), and while
sampling, every dropout module (`torch.nn.modules.dropout._DropoutNd`: Dropout, Dropout1d/2d/3d,
AlphaDropout, FeatureAlphaDropout) is temporarily patched so that, on an input of n*B rows coming
from n samples, it draws sample t's mask of shape (B, ...) from sample t's generator and
concatenates the n masks. Both samplers use this patched dropout: a naive pass is the n = 1 case,
so in either path sample t's generator is consumed by the same layers, in the same order, for
masks of the same shape, and the masks agree bit for bit (chunking changes nothing either). The
outputs then agree exactly wherever the stochastic rest computes each row independently of the
batch size; batched kernels (Linear, convolution) may sum in another order for T*B rows than for
B rows, so on the real models they agree to ~1e-8 (tests use atol 1e-6), not bit for bit.

The patched dropout repeats torch's own `_dropout_impl` operation by operation (Bernoulli noise of
the input's shape, or (rows, channels, 1, ...) for the feature variants; 1/(1-p) scaling, or the
SELU-preserving affine noise of the alpha variants; zeros for p = 1). So naive pass t is bit for bit
the pass that stock torch dropout gives after `torch.manual_seed(seeds[t])`. It assumes what all
`dualfuse` models satisfy: dropout inputs are batched, batch first.

Only dropout layers sample (`enable_mc_dropout`); BatchNorm and everything else stay in eval mode,
so running statistics are never updated, and all modes are restored afterwards.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

Seeds = int | Sequence[int] | None

_FEATURE_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.FeatureAlphaDropout)
_ALPHA_DROPOUT = (nn.AlphaDropout, nn.FeatureAlphaDropout)
_SELU_ALPHA = 1.7580993408473766  # torch's alpha-dropout constant (-SELU scale * alpha)
_SEED_RANGE = 2**62


def dropout_modules(model: nn.Module) -> list[_DropoutNd]:
    """Every dropout module of the model (any `_DropoutNd` subclass), in registration order."""
    return [module for module in model.modules() if isinstance(module, _DropoutNd)]


@contextmanager
def enable_mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the whole model except dropout modules, which sample; restores every mode on exit."""
    # One traversal, and only the modes that change are set (Module.__setattr__ is slow and large
    # CNNs have thousands of modules; this runs for every MC call).
    changed = []
    for module in model.modules():
        sample = isinstance(module, _DropoutNd)
        if module.training != sample:
            changed.append((module, module.training))
            module.training = sample
    try:
        yield model
    finally:
        for module, training in changed:
            module.training = training


def sample_seeds(samples: int, seed: Seeds = 0) -> list[int]:
    """One seed per MC sample: given as a sequence, derived from an int base seed, or (None) from torch's RNG."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if seed is not None and not isinstance(seed, int):
        seeds = [int(s) for s in seed]
        if len(seeds) != samples:
            raise ValueError(f"expected {samples} seeds (one per sample), got {len(seeds)}")
        return seeds
    if seed is None:
        seed = int(torch.randint(_SEED_RANGE, ()).item())
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(_SEED_RANGE, (samples,), generator=generator).tolist()


def case_keys(case_ids: Sequence[str]) -> list[int]:
    """A stable 63-bit key per case id (SHA-256): what a case's dropout masks are drawn from."""
    return [int.from_bytes(hashlib.sha256(str(case_id).encode("utf-8")).digest()[:8], "big") >> 1
            for case_id in case_ids]


def _mix(sample_seed: int, case_key: int) -> int:
    """The seed of one (sample, case) mask stream: a hash of both, so streams never overlap."""
    digest = hashlib.sha256(f"{sample_seed}:{case_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class _SampleStreams:
    """Mask generators and the samples the current call covers.

    Without `cases`, one generator per sample serves every row of that sample (masks depend on the
    batch). With `cases` (one key per row of the batch), every (sample, case) pair owns a CPU
    generator, so a case's masks depend only on (seed, case, sample) and are the same bit for bit
    whatever batch, order, neighbours or device it is predicted with.
    """

    def __init__(self, seeds: Sequence[int], cases: Sequence[int] | None = None):
        self.seeds = list(seeds)
        self.cases = None if cases is None else list(cases)
        self.active = range(0)
        self._generators: dict[tuple, torch.Generator] = {}

    def generators(self, device: torch.device) -> list[torch.Generator]:
        found = []
        for t in self.active:
            key = (device, t)
            if key not in self._generators:
                self._generators[key] = torch.Generator(device=device).manual_seed(self.seeds[t])
            found.append(self._generators[key])
        return found

    def case_generators(self) -> list[list[torch.Generator]]:
        """Per active sample, one CPU generator per case, created on first use and then continued."""
        found = []
        for t in self.active:
            row = []
            for b, case in enumerate(self.cases):
                key = (t, b)
                if key not in self._generators:
                    self._generators[key] = torch.Generator().manual_seed(_mix(self.seeds[t], case))
                row.append(self._generators[key])
            found.append(row)
        return found


def _sampled_dropout(module: _DropoutNd, x: torch.Tensor, streams: _SampleStreams) -> torch.Tensor:
    """`module`'s dropout on rows from `len(streams.active)` samples, each masked from its own generator."""
    p = float(module.p)
    if not module.training or p == 0.0:
        return x
    if p == 1.0:
        return x * torch.zeros((), dtype=x.dtype, device=x.device)
    samples = len(streams.active)
    if x.dim() == 0 or x.shape[0] % samples:
        raise ValueError(f"{type(module).__name__}: input shape {tuple(x.shape)} does not hold "
                         f"{samples} samples along its first (batch) dimension")
    rows = x.shape[0] // samples
    if isinstance(module, _FEATURE_DROPOUT) and x.dim() > 2:
        mask_shape = (rows, x.shape[1]) + (1,) * (x.dim() - 2)
    else:
        mask_shape = (rows, *x.shape[1:])
    if streams.cases is None:
        masks = [torch.empty(mask_shape, dtype=x.dtype, device=x.device).bernoulli_(1 - p, generator=g)
                 for g in streams.generators(x.device)]
    else:
        if rows != len(streams.cases):
            raise ValueError(f"{type(module).__name__}: {rows} rows per sample but {len(streams.cases)} case keys")
        # One row per (sample, case), drawn on the CPU so the masks do not depend on the device.
        row_shape = (1, *mask_shape[1:])
        masks = [torch.cat([torch.empty(row_shape, dtype=torch.float32).bernoulli_(1 - p, generator=g)
                            for g in per_case]).to(device=x.device, dtype=x.dtype)
                 for per_case in streams.case_generators()]
    noise = masks[0] if len(masks) == 1 else torch.cat(masks)
    # The same operations, in the same order, as torch's `_dropout_impl`, so one sample's output
    # equals torch's dropout under a global seed equal to that sample's seed.
    if isinstance(module, _ALPHA_DROPOUT):
        a = 1.0 / ((_SELU_ALPHA * _SELU_ALPHA * p + 1) * (1 - p)) ** 0.5
        shift = noise.add(-1).mul_(_SELU_ALPHA * a).add_(_SELU_ALPHA * a * p)
        return (x * noise.mul_(a)).add_(shift)
    return x * noise.div_(1 - p)


@contextmanager
def _seeded_dropout(model: nn.Module, streams: _SampleStreams) -> Iterator[_SampleStreams]:
    """Temporarily route every dropout module of `model` through `_sampled_dropout` with `streams`."""
    patched = []
    try:
        for module in dropout_modules(model):
            if "forward" in module.__dict__:
                raise RuntimeError(f"{type(module).__name__} already has a patched forward")
            module.forward = lambda x, module=module: _sampled_dropout(module, x, streams)
            patched.append(module)
        yield streams
    finally:
        for module in patched:
            del module.forward


def repeat_state(state, times: int):
    """Repeat every tensor of a state `times` along the batch: (B, ...) → (times*B, ...), row t*B + b."""
    if isinstance(state, torch.Tensor):
        return state.repeat(times, *([1] * (state.dim() - 1)))
    if isinstance(state, Mapping):
        return {key: repeat_state(value, times) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(repeat_state(value, times) for value in state)
    return state


# Elements of repeated state per batched stochastic call when `chunk` is not given. Measured on a
# 2-core CPU (benchmarks/mc_cost.py, DRIFA-Net "paper" at 224 px, B=2, T=30): one call of all 30
# samples took 43.9x a deterministic pass, 6 per call 26.5x, 1 per call 20.9x (naive: 32.3x), while
# small states (DCAT, DRIFA-Net "head") are fastest in one call. Large maps thrash the cache.
AUTO_CHUNK_ELEMENTS = 2**20


def _state_elements(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, Mapping):
        return sum(_state_elements(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_elements(value) for value in state)
    return 0


def auto_chunk(state, samples: int) -> int:
    """Samples per batched call: all of them for small states, fewer for large maps (cache-friendly)."""
    return max(1, min(samples, AUTO_CHUNK_ELEMENTS // max(1, _state_elements(state))))


def _unflatten(logits, samples: int):
    """(samples*B, C) → (samples, B, C); a dict per task."""
    if isinstance(logits, Mapping):
        return {task: _unflatten(value, samples) for task, value in logits.items()}
    return logits.reshape(samples, logits.shape[0] // samples, *logits.shape[1:])


def _concat(parts: list, dim: int = 0):
    """Concatenate sample blocks (tensors or dicts of tensors with the same keys) along `dim`."""
    if isinstance(parts[0], Mapping):
        return {task: _concat([part[task] for part in parts], dim) for task in parts[0]}
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


@torch.no_grad()
def mc_sample_naive(model: nn.Module, inputs, samples: int = 30, seed: Seeds = 0, cases: Sequence[int] | None = None):
    """T = `samples` full forward passes with dropout sampling: logits (T, B, C), or a dict of them.

    `cases`: one key per row (`case_keys(case_ids)`) for masks that depend on the case, not the batch.
    """
    streams = _SampleStreams(sample_seeds(samples, seed), cases)
    outputs = []
    with enable_mc_dropout(model), _seeded_dropout(model, streams):
        for t in range(samples):
            streams.active = range(t, t + 1)
            outputs.append(_unflatten(model(inputs), 1))
    return _concat(outputs)


@torch.no_grad()
def mc_sample_fast(model: nn.Module, inputs, samples: int = 30, chunk: int | None = None, seed: Seeds = 0,
                   cases: Sequence[int] | None = None):
    """The same samples as `mc_sample_naive`, with the deterministic prefix run once.

    `chunk` caps how many samples share one batched `forward_stochastic` call (default: as many as
    keep the repeated state under `AUTO_CHUNK_ELEMENTS`); any value gives the same samples.
    """
    with enable_mc_dropout(model):
        state = model.forward_deterministic(inputs)
    return mc_sample_from_state(model, state, samples, chunk, seed, cases)


@torch.no_grad()
def mc_sample_from_state(model: nn.Module, state, samples: int = 30, chunk: int | None = None, seed: Seeds = 0,
                         cases: Sequence[int] | None = None):
    """MC samples of the stochastic part from a state `forward_deterministic` already computed
    (callers that also need the eval-mode logits run the prefix once for both)."""
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    streams = _SampleStreams(sample_seeds(samples, seed), cases)
    outputs = []
    with enable_mc_dropout(model), _seeded_dropout(model, streams):
        step = min(chunk or auto_chunk(state, samples), samples)
        for start in range(0, samples, step):
            count = min(step, samples - start)
            streams.active = range(start, start + count)
            # A fresh copy per chunk: the stochastic part may work in place on its input.
            outputs.append(_unflatten(model.forward_stochastic(repeat_state(state, count)), count))
    return _concat(outputs)


def mc_logits(model: nn.Module, inputs, samples: int = 30, fast: bool = True, seed: Seeds = 0,
              chunk: int | None = None, cases: Sequence[int] | None = None):
    """MC-dropout logits (T, B, C) (a dict per task for multitask models), fast or naive."""
    if fast:
        return mc_sample_fast(model, inputs, samples, chunk=chunk, seed=seed, cases=cases)
    return mc_sample_naive(model, inputs, samples, seed=seed, cases=cases)


def softmax_samples(logits, temperature: float | Mapping[str, float] | None = None):
    """Softmax over classes of logit samples, after dividing by `temperature` (one, or one per task)."""
    if isinstance(logits, Mapping):
        return {task: softmax_samples(value, temperature[task] if isinstance(temperature, Mapping) else temperature)
                for task, value in logits.items()}
    if isinstance(temperature, Mapping):
        raise ValueError("a temperature per task needs a multitask model")
    if temperature is not None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        logits = logits / temperature
    return logits.float().softmax(dim=-1)


def mc_probs(model: nn.Module, inputs, samples: int = 30, fast: bool = True, seed: Seeds = 0,
             chunk: int | None = None, temperature: float | Mapping[str, float] | None = None):
    """MC-dropout class probabilities (T, B, C), a dict task -> (T, B, C) for multitask models.

    `seed`: an int base seed (reproducible), one seed per sample, or None (drawn from torch's RNG).
    `temperature`: optional temperature scaling of the logits before the softmax.
    """
    return softmax_samples(mc_logits(model, inputs, samples, fast, seed, chunk), temperature)
