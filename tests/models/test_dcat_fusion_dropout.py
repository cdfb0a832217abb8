"""DCAT with dropout on the fused maps (`fusion_drop_rate`): MC dropout through the fusion block.

At p > 0 the deterministic part is the trunk taps and the stochastic part the fusions, their
dropout, the merge and the head; at p = 0 the model, its split and its state dict are the head-only
model's. Fast MC must still give the naive samples (atol 1e-6: batched kernels, see
tests/uncertainty/test_mc_dropout.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dualfuse
from dualfuse.evaluation.predictions import predict_batch
from dualfuse.models.dcat import DCAT
from dualfuse.models.summary import example_inputs
from dualfuse.uncertainty.mc_dropout import case_keys, dropout_modules, mc_sample_fast, mc_sample_naive

PX, BATCH, T = 32, 3, 4
TINY = {"in_chans": 1, "embed_dim": 64, "num_heads": 2, "head_hidden": 16}
MODEL_CONFIGS = {
    "dcat_fusion": {**TINY, "fusion_drop_rate": 0.2},
    "dcat_fusion_maps": {**TINY, "fusion_drop_rate": 0.3, "merge": "maps", "drop_rate": 0.0},
}


def build(**kwargs) -> DCAT:
    torch.manual_seed(0)
    return dualfuse.create_model("dcat", **kwargs).eval()


@pytest.fixture(scope="module", params=list(MODEL_CONFIGS))
def model_case(request):
    model = build(**MODEL_CONFIGS[request.param])
    torch.manual_seed(1)
    return model, example_inputs(model, PX, BATCH)


@torch.no_grad()
def test_contract_split_and_fused_vector(model_case):
    model, x = model_case
    full = model(x)
    state = model.forward_deterministic(x)
    eff_maps, res_maps = state  # the trunk taps, one map per scale and trunk
    assert len(eff_maps) == len(res_maps) == len(model.fusions)
    assert all(t.ndim == 4 and t.shape[0] == BATCH for t in (*eff_maps, *res_maps))
    split = model.forward_stochastic(state)
    assert split.keys() == full.keys() == {"label"}
    assert torch.equal(split["label"], full["label"])
    features = model.forward_features(x)
    fused = model.forward_head(features, pre_logits=True)
    assert fused.shape == (BATCH, model.num_features)
    assert torch.equal(model.forward_head(features)["label"], full["label"])
    # Eval mode: fusion dropout is the identity.
    assert len(dropout_modules(model)) == len(model.fusions) + len(dropout_modules(model.head))


@torch.no_grad()
def test_fast_mc_equals_naive_and_samples_differ(model_case):
    model, x = model_case
    for cases in (None, case_keys([f"case{i}" for i in range(BATCH)])):
        naive = mc_sample_naive(model, x, T, seed=7, cases=cases)["label"]
        fast = mc_sample_fast(model, x, T, seed=7, cases=cases)["label"]
        chunked = mc_sample_fast(model, x, T, chunk=3, seed=7, cases=cases)["label"]
        assert naive.shape == (T, BATCH, 2)
        torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(chunked, naive, rtol=1e-5, atol=1e-6)
        assert all(not torch.allclose(fast[0], fast[t]) for t in range(1, T))
    assert not any(m.training for m in model.modules())


@torch.no_grad()
def test_fusion_dropout_alone_makes_samples_differ():
    """With no head dropout, MC samples still vary: the fused representation is sampled."""
    model = build(**{**TINY, "drop_rate": 0.0, "fusion_drop_rate": 0.2})
    x = example_inputs(model, PX, BATCH)
    samples = mc_sample_fast(model, x, T, seed=3)["label"]
    assert all(not torch.allclose(samples[0], samples[t]) for t in range(1, T))
    head_only = build(**{**TINY, "drop_rate": 0.0})
    still = mc_sample_fast(head_only, x, T, seed=3)["label"]
    assert all(torch.equal(still[0], still[t]) for t in range(1, T))


@torch.no_grad()
def test_rate_zero_is_the_head_only_model():
    default, zero, fusion = build(**TINY), build(**TINY, fusion_drop_rate=0.0), build(**TINY, fusion_drop_rate=0.4)
    keys = list(default.state_dict())
    assert list(zero.state_dict()) == keys == list(fusion.state_dict())  # nn.Dropout has no state
    assert not hasattr(zero, "fusion_drops") and not any("fusion_drops" in k for k in keys)
    assert [n for n, _ in zero.named_modules()] == [n for n, _ in default.named_modules()]
    x = example_inputs(default, PX, BATCH)
    # At p = 0 the split is today's: the fused descriptor, then the head.
    state = zero.forward_deterministic(x)
    assert isinstance(state, torch.Tensor) and torch.equal(state, default.forward_features(x))
    assert torch.equal(zero(x)["label"], default(x)["label"])
    # Checkpoints load both ways; in eval mode the flag changes nothing.
    fusion.load_state_dict(default.state_dict(), strict=True)
    default.load_state_dict(fusion.state_dict(), strict=True)
    assert torch.equal(fusion(x)["label"], default(x)["label"])


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_out_of_range_is_refused(rate):
    with pytest.raises(ValueError, match="fusion_drop_rate"):
        DCAT(**TINY, fusion_drop_rate=rate)


@torch.no_grad()
def test_a_case_gets_the_same_numbers_in_any_batch():
    """Canonical chunks + per-case masks hold through the fusion too: a case alone, in a batch, or in
    reversed order gets bit-identical eval logits and MC samples."""
    model = build(**MODEL_CONFIGS["dcat_fusion"])
    inputs = example_inputs(model, PX, 7)
    ids = [f"case{i}" for i in range(7)]

    def run(rows):
        return predict_batch([model], inputs[rows], case_keys([ids[i] for i in rows]), ["label"], mc_samples=3, seed=7)

    members, samples = run(list(range(7)))
    assert samples["label"].shape == (3, 7, 2)
    for rows in ([4], list(range(6, -1, -1))):
        part_members, part_samples = run(rows)
        assert np.array_equal(part_members["label"], members["label"][:, rows])
        assert np.array_equal(part_samples["label"], samples["label"][:, rows])
