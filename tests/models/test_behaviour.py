"""Training and inference behaviour: gradients, determinism, the MC-dropout split, input errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dualfuse
from dualfuse.models.summary import example_inputs

MODEL_CONFIGS = {
    "dcat": dict(name="dcat"),
    "dcat_maps_mlp": dict(name="dcat", merge="maps", mlp_ratio=2.0, kv_pool=2),
    "drifa_paper": dict(name="drifa_net", num_classes=(3, 2)),
    "drifa_head": dict(name="drifa_net", num_classes=(3, 2), mc_dropout="head"),
    "drifa_resnet18": dict(name="drifa_net", backbone="resnet18", modalities=3),
    "timm_classifier": dict(name="timm_classifier"),
    "concat_fusion": dict(name="concat_fusion", taps=("blocks.3", "layer3")),
}


def build(config_id: str) -> nn.Module:
    config = dict(MODEL_CONFIGS[config_id])
    return dualfuse.create_model(config.pop("name"), **config)


def total(out: dict[str, torch.Tensor]) -> torch.Tensor:
    assert isinstance(out, dict), f"models return {{task: logits}}, got {type(out).__name__}"
    return sum(o.sum() for o in out.values())


def as_tuple(out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    assert isinstance(out, dict), f"models return {{task: logits}}, got {type(out).__name__}"
    return tuple(out.values())


def enable_mc_dropout(model: nn.Module) -> None:
    """Eval mode everywhere except dropout layers, which sample."""
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()


@pytest.mark.parametrize("config_id", MODEL_CONFIGS)
def test_gradients_reach_every_trainable_parameter(config_id):
    model = build(config_id).train()
    # timm ResNets zero-init the last BatchNorm of each block, which blocks gradients at init by design;
    # re-randomise norms so an all-zero gradient can only mean a disconnected parameter.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    loss = total(model(example_inputs(model, 64, batch_size=3)))
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    zero = [name for name, p in model.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert not zero, f"all-zero gradient for {zero[:5]}"


@pytest.mark.parametrize("config_id", MODEL_CONFIGS)
@torch.no_grad()
def test_eval_is_deterministic_and_mc_dropout_samples(config_id):
    model = build(config_id).eval()
    inputs = example_inputs(model, 64, batch_size=2)
    first, second = as_tuple(model(inputs)), as_tuple(model(inputs))
    assert all(torch.equal(a, b) for a, b in zip(first, second))

    enable_mc_dropout(model)
    sample_a, sample_b = as_tuple(model(inputs)), as_tuple(model(inputs))
    assert any(not torch.allclose(a, b) for a, b in zip(sample_a, sample_b))


@pytest.mark.parametrize("config_id", MODEL_CONFIGS)
@torch.no_grad()
def test_deterministic_prefix_then_stochastic_rest_equals_forward(config_id):
    model = build(config_id)
    enable_mc_dropout(model)
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    inputs = example_inputs(model, 64, batch_size=2)
    torch.manual_seed(123)
    full = as_tuple(model(inputs))
    torch.manual_seed(123)
    split = as_tuple(model.forward_stochastic(model.forward_deterministic(inputs)))
    assert all(torch.equal(a, b) for a, b in zip(full, split))
    bn_after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(bn_before[k], bn_after[k]) for k in bn_before)


@torch.no_grad()
def test_drifa_split_point_follows_dropout_placement():
    paper = dualfuse.create_model("drifa_net", modalities=2).eval()
    head = dualfuse.create_model("drifa_net", modalities=2, mc_dropout="head").eval()
    inputs = example_inputs(paper, 64, batch_size=1)
    # "paper": the prefix stops after block 1 (64 channels at stride 4); "head": after the last MIFA.
    assert [tuple(x.shape) for x in paper.forward_deterministic(inputs)] == [(1, 64, 16, 16)] * 2
    assert [tuple(x.shape) for x in head.forward_deterministic(inputs)] == [(1, 512, 2, 2)] * 2


@pytest.mark.parametrize("name", ("dcat", "timm_classifier", "concat_fusion"))
def test_single_input_errors(name):
    model = dualfuse.create_model(name, in_chans=1)
    with pytest.raises(ValueError, match=r"expected 1 channel\(s\), got 3"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"expected a 4D tensor .* got shape \(1, 64, 64\)"):
        model(torch.randn(1, 64, 64))


def test_drifa_input_errors():
    model = dualfuse.create_model("drifa_net", modalities=["mri", "ct"])
    image = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"expected 2 modalities \['mri', 'ct'\], got 3 inputs"):
        model([image, image, image])
    with pytest.raises(ValueError, match=r"missing modalities \['ct'\]"):
        model({"mri": image, "xray": image})
    with pytest.raises(ValueError, match=r"modality 'ct': expected 3 channel\(s\), got 1"):
        model([image, torch.randn(2, 1, 64, 64)])
    with pytest.raises(ValueError, match=r"modality 'mri': expected a 4D tensor"):
        model([image[0], image])
    with pytest.raises(ValueError, match="different batch sizes"):
        model([image, image[:1]])


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="drifa_net", mc_dropout="always"), "mc_dropout must be one of"),
    (dict(name="drifa_net", num_classes=1), "at least 2"),
    (dict(name="drifa_net", modalities=0), "modalities must be at least 1"),
    (dict(name="drifa_net", modalities=2, in_chans=[1, 3, 3]), "in_chans: expected 2 values"),
    (dict(name="drifa_net", use_hifa=False, use_clia=False), "MFA needs HIFA or CLIA"),
    (dict(name="dcat", direction="sideways"), "direction must be one of"),
    (dict(name="dcat", refine="extra"), "refine mode must be one of"),
    (dict(name="dcat", eff_taps=("blocks.2",), res_taps=("layer2", "layer3")), "must pair up"),
    (dict(name="dcat", eff_taps=("blocks.2", "blocks.3"), res_taps=("layer3", "layer4")), "tap strides must match"),
    (dict(name="dcat", eff_taps=("blocks.9",), res_taps=("layer3",)), r"feature taps \['blocks.9'\] not found"),
    (dict(name="dcat", pretrained="weights.pth"), "two backbones"),
    (dict(name="concat_fusion", backbones=("resnet18",)), "two or more backbones"),
])
def test_constructor_errors(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        dualfuse.create_model(name, **kwargs)
