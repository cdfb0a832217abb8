"""MC dropout: the fast path gives the naive samples, only dropout samples, nothing else changes.

Tolerances: the dropout masks agree bit for bit (the toy model, whose stochastic part is
element-wise, and the stock-torch reference check that with `torch.equal`). On the real models the
logits agree to ~1e-8, not exactly: their stochastic parts contain Linear/conv layers, and batched
kernels may sum in another order for T*B rows than for B rows. Those comparisons use atol 1e-6.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import dualfuse
from dualfuse.evaluation.predictions import predict_batch
from dualfuse.models.summary import example_inputs
from dualfuse.uncertainty.ensemble import ensemble_mc_logits, ensemble_mc_probs
from dualfuse.uncertainty.mc_dropout import (
    case_keys,
    enable_mc_dropout,
    mc_probs,
    mc_sample_fast,
    mc_sample_naive,
    sample_seeds,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PX, BATCH, T = 32, 2, 5
MODEL_CONFIGS = {
    "dcat": dict(name="dcat"),
    "timm_classifier": dict(name="timm_classifier"),
    "concat_fusion": dict(name="concat_fusion"),
    "drifa_head": dict(name="drifa_net", modalities=2, num_classes=(3, 2), mc_dropout="head"),
    "drifa_paper": dict(name="drifa_net", modalities=2, num_classes=(3, 2), mc_dropout="paper"),
}


@pytest.fixture(scope="module", params=list(MODEL_CONFIGS))
def model_case(request):
    torch.manual_seed(0)
    config = dict(MODEL_CONFIGS[request.param])
    model = dualfuse.create_model(config.pop("name"), **config).eval()
    return request.param, model, example_inputs(model, PX, BATCH)


def as_dict(out) -> dict[str, torch.Tensor]:
    """The toy model may return a bare tensor (MC dropout supports any module); registered models may not."""
    return dict(out) if isinstance(out, dict) else {"label": out}


def task_dict(out, model: nn.Module) -> dict[str, torch.Tensor]:
    """A registered model's output (or its MC samples): always `{task: tensor}`, one entry per task."""
    assert isinstance(out, dict), f"expected {{task: logits}}, got {type(out).__name__}"
    assert list(out) == list(model.tasks)
    return out


def assert_close(a, b, exact: bool = False):
    a, b = as_dict(a), as_dict(b)
    assert a.keys() == b.keys()
    for task in a:
        if exact:
            assert torch.equal(a[task], b[task]), task
        else:
            torch.testing.assert_close(a[task], b[task], rtol=1e-5, atol=1e-6)


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.named_buffers()}


class ToyModel(nn.Module):
    """Every dropout type, one module used twice, and a stochastic part that is element-wise only."""

    def __init__(self, tasks: dict[str, int] | None = None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4).view(1, 4, 1, 1))
        self.drops = nn.ModuleList([nn.Dropout(0.3), nn.Dropout2d(0.4), nn.AlphaDropout(0.2),
                                    nn.FeatureAlphaDropout(0.25)])
        self.shared = nn.Dropout(0.5)
        self.tasks = tasks

    def forward_deterministic(self, x):
        return self.stem(x)

    def forward_stochastic(self, state):
        x = self.drops[0](state)
        x = self.shared(torch.tanh(x * self.scale))
        x = self.drops[3](self.drops[2](self.drops[1](x)))
        x = self.shared(x).flatten(1)
        if self.tasks is None:
            return x
        return {task: x[:, :n] for task, n in self.tasks.items()}

    def forward(self, x):
        return self.forward_stochastic(self.forward_deterministic(x))


@torch.no_grad()
def test_fast_equals_naive_sample_for_sample(model_case):
    config_id, model, inputs = model_case
    before = buffers(model)
    naive = task_dict(mc_sample_naive(model, inputs, T, seed=11), model)
    fast = task_dict(mc_sample_fast(model, inputs, T, seed=11), model)
    chunked = task_dict(mc_sample_fast(model, inputs, T, chunk=2, seed=11), model)
    assert_close(fast, naive)
    assert_close(chunked, fast)
    for task, samples in fast.items():
        assert samples.shape == (T, BATCH, model.tasks[task]), task
        assert samples.shape[:2] == (T, BATCH), task
        # Dropout is active: every sample differs from the others.
        assert all(not torch.allclose(samples[0], samples[t]) for t in range(1, T)), task
    # Eval mode everywhere else: BatchNorm statistics (running_mean/var, num_batches_tracked) untouched.
    after = buffers(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not any(module.training for module in model.modules())


@pytest.mark.parametrize("config_id", ["dcat", "drifa_paper"])
@torch.no_grad()
def test_naive_sample_t_is_stock_torch_dropout_seeded_with_seed_t(config_id):
    torch.manual_seed(0)
    config = dict(MODEL_CONFIGS[config_id])
    model = dualfuse.create_model(config.pop("name"), **config)
    inputs = example_inputs(model, PX, BATCH)
    seeds = sample_seeds(3, seed=5)
    reference = []
    with enable_mc_dropout(model):
        for seed in seeds:
            torch.manual_seed(seed)
            reference.append(task_dict(model(inputs), model))
    stacked = {task: torch.stack([r[task] for r in reference]) for task in reference[0]}
    assert_close(mc_sample_naive(model, inputs, 3, seed=5), stacked, exact=True)
    assert_close(mc_sample_naive(model, inputs, 3, seed=seeds), stacked, exact=True)


@pytest.mark.parametrize("tasks", [None, {"a": 3, "b": 2}])
@torch.no_grad()
def test_toy_model_masks_bit_exact_for_every_dropout_type_and_chunk(tasks):
    model = ToyModel(tasks)
    inputs = torch.randn(3, 3, 4, 4)
    naive = mc_sample_naive(model, inputs, 7, seed=2)
    for chunk in (None, 1, 3, 7, 100):
        assert_close(mc_sample_fast(model, inputs, 7, chunk=chunk, seed=2), naive, exact=True)
    other = mc_sample_fast(model, inputs, 7, seed=3)
    assert all(not torch.equal(a, b) for a, b in zip(as_dict(naive).values(), as_dict(other).values()))


@torch.no_grad()
def test_case_masks_follow_the_case_not_the_batch():
    """With case keys, a case's masks depend on (seed, case, sample) only: exact for any order,
    batch size, neighbours, and for the fast and the naive paths alike (toy model: element-wise)."""
    model = ToyModel({"a": 3}).eval()
    inputs = torch.randn(9, 3, 4, 4)
    keys = case_keys([f"case{i}" for i in range(9)])
    full = mc_sample_fast(model, inputs, 6, seed=4, cases=keys)["a"]
    assert torch.equal(mc_sample_naive(model, inputs, 6, seed=4, cases=keys)["a"], full)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    shuffled = mc_sample_fast(model, inputs[order], 6, seed=4, cases=[keys[i] for i in order])["a"]
    assert torch.equal(shuffled[:, order.argsort()], full)
    for start, stop in ((0, 1), (2, 9), (4, 7)):
        part = mc_sample_fast(model, inputs[start:stop], 6, seed=4, cases=keys[start:stop])["a"]
        # The masks are identical; the convolution stem may round differently for another batch size
        # (predict_batch's canonical chunks remove that for the real models, tested below).
        assert torch.equal(part == 0, full[:, start:stop] == 0), (start, stop)
        torch.testing.assert_close(part, full[:, start:stop], rtol=1e-5, atol=1e-6)
    # Another case id, other masks; another seed, other masks.
    renamed = mc_sample_fast(model, inputs, 6, seed=4, cases=case_keys([f"x{i}" for i in range(9)]))["a"]
    assert not torch.equal(renamed, full)
    assert not torch.equal(mc_sample_fast(model, inputs, 6, seed=5, cases=keys)["a"], full)


@pytest.mark.parametrize("config_id", list(MODEL_CONFIGS))
@torch.no_grad()
def test_registered_models_give_a_case_the_same_numbers_in_any_batch(config_id):
    """Canonical chunks + per-case masks: batch sizes 1, 7 and 64 and reversed order give bit-identical
    per-case eval logits and MC samples on the real models (issue 13)."""
    torch.manual_seed(0)
    config = dict(MODEL_CONFIGS[config_id])
    model = dualfuse.create_model(config.pop("name"), **config).eval()
    inputs = example_inputs(model, PX, 64)
    ids = [f"case{i}" for i in range(64)]
    tasks = list(model.tasks)

    def run(rows):
        take = (lambda x: {m: v[rows] for m, v in x.items()}) if isinstance(inputs, dict) else (lambda x: x[rows])
        return predict_batch([model], take(inputs), case_keys([ids[i] for i in rows]), tasks, mc_samples=3, seed=7)

    members, samples = run(list(range(64)))
    # Each call pads to whole 32-row chunks, so a call costs a chunk or two: single cases at both ends
    # of both chunks, batches of 7 that straddle the chunk boundary and the ends, and all 64 reversed.
    for batches in ([[0], [31], [32], [63]], [list(range(k, min(k + 7, 64))) for k in (0, 28, 30, 57)],
                    [list(range(63, -1, -1))]):
        for rows in batches:
            part_members, part_samples = run(rows)
            for task in tasks:
                assert (part_members[task] == members[task][:, rows]).all(), (config_id, task, rows[:3])
                assert (part_samples[task] == samples[task][:, rows]).all(), (config_id, task, rows[:3])


def test_enable_mc_dropout_sets_and_restores_modes():
    model = ToyModel().train()
    model.stem[1].eval()
    before = {name: module.training for name, module in model.named_modules()}
    with enable_mc_dropout(model):
        for name, module in model.named_modules():
            expected = isinstance(module, torch.nn.modules.dropout._DropoutNd)
            assert module.training == expected, name
    assert {name: module.training for name, module in model.named_modules()} == before
    with pytest.raises(RuntimeError, match="boom"), enable_mc_dropout(model):
        raise RuntimeError("boom")
    assert {name: module.training for name, module in model.named_modules()} == before
    # The seeded dropout is removed again: plain dropout modules afterwards.
    mc_sample_fast(model, torch.randn(2, 3, 4, 4), 2)
    assert not any("forward" in module.__dict__ for module in model.modules())


@torch.no_grad()
def test_seeds_reproduce_and_follow_torch_rng():
    model = ToyModel()
    inputs = torch.randn(2, 3, 4, 4)
    assert torch.equal(mc_sample_fast(model, inputs, 4, seed=1), mc_sample_fast(model, inputs, 4, seed=1))
    assert not torch.equal(mc_sample_fast(model, inputs, 4, seed=1), mc_sample_fast(model, inputs, 4, seed=2))
    torch.manual_seed(9)
    first = mc_sample_fast(model, inputs, 4, seed=None)
    torch.manual_seed(9)
    assert torch.equal(first, mc_sample_naive(model, inputs, 4, seed=None))
    with pytest.raises(ValueError, match="expected 4 seeds"):
        mc_sample_fast(model, inputs, 4, seed=[1, 2])
    with pytest.raises(ValueError, match="samples must be at least 1"):
        mc_sample_fast(model, inputs, 0)
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        mc_sample_fast(model, inputs, 4, chunk=0)


@torch.no_grad()
def test_mc_probs_softmax_and_temperature():
    model = ToyModel({"a": 3, "b": 2})
    inputs = torch.randn(2, 3, 4, 4)
    logits = mc_sample_fast(model, inputs, 4)
    probs = mc_probs(model, inputs, 4, temperature={"a": 2.0, "b": 0.5})
    assert probs.keys() == {"a", "b"}
    torch.testing.assert_close(probs["a"], (logits["a"] / 2.0).softmax(-1))
    torch.testing.assert_close(probs["b"], (logits["b"] / 0.5).softmax(-1))
    torch.testing.assert_close(probs["a"].sum(-1), torch.ones(4, 2))
    assert_close(mc_probs(model, inputs, 4, fast=False), mc_probs(model, inputs, 4, fast=True), exact=True)
    with pytest.raises(ValueError, match="temperature must be positive"):
        mc_probs(ToyModel(), inputs, 2, temperature=0.0)


@pytest.mark.parametrize("tasks", [None, {"a": 3, "b": 2}])
@torch.no_grad()
def test_ensemble_stacks_all_members_samples(tasks):
    torch.manual_seed(0)
    members = [ToyModel(tasks) for _ in range(3)]
    inputs = torch.randn(2, 3, 4, 4)
    probs = as_dict(ensemble_mc_probs(members, inputs, samples=4, seed=7))
    seeds = sample_seeds(12, seed=7)
    per_member = [as_dict(mc_probs(m, inputs, 4, seed=seeds[4 * k:4 * k + 4])) for k, m in enumerate(members)]
    for task, samples in probs.items():
        assert samples.shape[:2] == (12, 2)
        for k, member in enumerate(per_member):
            assert torch.equal(samples[4 * k:4 * k + 4], member[task])
        # The ensemble mean is the mean over all K·T samples, i.e. over every member's mean.
        torch.testing.assert_close(samples.mean(0), torch.stack([m[task].mean(0) for m in per_member]).mean(0))
        assert not torch.allclose(per_member[0][task].mean(0), samples.mean(0))
    logits = as_dict(ensemble_mc_logits(members, inputs, samples=4, seed=7))
    assert_close({task: value.softmax(-1) for task, value in logits.items()}, probs, exact=True)
    naive = as_dict(ensemble_mc_probs(members, inputs, samples=4, fast=False, seed=7))
    assert_close(naive, probs, exact=True)
    with pytest.raises(ValueError, match="at least one model"):
        ensemble_mc_probs([], inputs)


def test_benchmark_quick_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("mc_cost", REPO_ROOT / "benchmarks" / "mc_cost.py")
    mc_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mc_cost)
    out = tmp_path / "mc_cost.json"
    mc_cost.main(["--quick", "--models", "dcat", "drifa_head", "--sizes", "32", "--batch-sizes", "2",
                  "--samples", "3", "--threads", "1", "--out", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["model"], r["px"], r["samples"], r["batch_size"]) for r in rows] == [("dcat", 32, 3, 2),
                                                                                  ("drifa_head", 32, 3, 2)]
    for row in rows:
        for key in ("fast_ratio", "naive_ratio", "one_pass_ms", "fast_ms", "naive_ms", "threads", "torch"):
            assert key in row, key
        assert row["fast_ratio"] > 0 and row["naive_ratio"] > 0
    assert isinstance(rows[0]["meets_target"], bool) and "meets_target" not in rows[1]
