"""Spec facts: taps, truncation, ablation switches change the modules they say they change."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import Mlp
from timm.layers.cbam import CbamModule
from torch import nn

import dualfuse
from dualfuse.models.layers import CLIA, HIFA, MFA, MGIFA, MIFA, MLIFA, CrossAttention, EnhancedCbam


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(module, kind) for module in model.modules())


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_dcat_taps_and_truncated_trunk_sizes():
    model = dualfuse.create_model("dcat")
    assert model.eff.feature_info == [
        {"module": "blocks.2", "num_chs": 56, "reduction": 8},
        {"module": "blocks.3", "num_chs": 112, "reduction": 16},
    ]
    assert model.res.feature_info == [
        {"module": "layer2", "num_chs": 128, "reduction": 8},
        {"module": "layer3", "num_chs": 256, "reduction": 16},
    ]
    # models.md: EfficientNet-B4 up to block 4 is 1.3 M parameters, ResNet-34 up to layer 3 is 8.2 M.
    assert n_params(model.eff) == 1_329_260
    assert n_params(model.res) == 8_170_304


def test_timm_default_stride16_tap_is_the_trap_we_avoid():
    # timm's own stride-16 stage end of efficientnet_b4 has 160 channels, not the paper's 112.
    info = timm.create_model("efficientnet_b4", features_only=True).feature_info
    assert [(i["module"], i["num_chs"]) for i in info.get_dicts() if i["reduction"] == 16] == [("blocks.4", 160)]


def test_dcat_truncate_false_keeps_frozen_unused_stages():
    model = dualfuse.create_model("dcat", truncate=False)
    unused = n_params(model.eff.unused) + n_params(model.res.unused)
    assert unused > 20_000_000
    assert not any(p.requires_grad for p in model.eff.unused.parameters())
    truncated = dualfuse.create_model("dcat")
    assert n_params(model) - n_params(truncated) == unused


def test_dcat_ablation_switches():
    default = dualfuse.create_model("dcat")
    assert len(default.fusions) == 2 and count(default, CrossAttention) == 4
    assert count(default, CbamModule) == 2 and all(m.mode == "enhanced" for m in default.modules() if isinstance(m, EnhancedCbam))
    assert count(default, Mlp) == 0 and default.merge_conv is None

    assert count(dualfuse.create_model("dcat", direction="none"), CrossAttention) == 0
    one_way = dualfuse.create_model("dcat", direction="eff_to_res")
    assert [f.cross_attention.eff_attends_res is not None for f in one_way.fusions] == [True, True]
    assert [f.cross_attention.res_attends_eff is None for f in one_way.fusions] == [True, True]
    other_way = dualfuse.create_model("dcat", direction="res_to_eff")
    assert all(f.cross_attention.eff_attends_res is None for f in other_way.fusions)
    assert count(dualfuse.create_model("dcat", refine="none"), CbamModule) == 0
    plain = dualfuse.create_model("dcat", refine="plain")
    assert count(plain, CbamModule) == 2 and all(m.mode == "plain" for m in plain.modules() if isinstance(m, EnhancedCbam))
    single = dualfuse.create_model("dcat", eff_taps=("blocks.3",), res_taps=("layer3",))
    assert len(single.fusions) == 1 and single.num_features == 512
    assert count(dualfuse.create_model("dcat", mlp_ratio=2.0), Mlp) == 4
    maps = dualfuse.create_model("dcat", merge="maps")
    assert maps.merge_conv is not None and maps.num_features == 512
    pooled = dualfuse.create_model("dcat", kv_pool=(2, 1))
    assert [f.cross_attention.eff_attends_res.kv_pool for f in pooled.fusions] == [2, 1]


def test_plain_cbam_is_timm_cbam_and_enhanced_adds_the_input():
    torch.manual_seed(0)
    block = EnhancedCbam(32, mode="enhanced").eval()
    x = torch.randn(2, 32, 8, 8)
    assert torch.allclose(block(x), x + block.cbam(x))
    block.mode = "plain"
    assert torch.allclose(block(x), block.cbam(x))


def test_drifa_net_ablation_switches():
    default = dualfuse.create_model("drifa_net", modalities=2)
    # 2 branches × (stem + 8 blocks × 2 convs + 7 after-block) MFAs; one MIFA after each of 8 blocks.
    assert count(default, MFA) == 2 * (1 + 16 + 7)
    assert count(default, MIFA) == 8
    assert count(default, HIFA) == count(default, CLIA) == count(default, MFA)
    assert count(default, MGIFA) == count(default, MLIFA) == 8
    # "paper": dropout after blocks 1-6 in each branch, plus the head.
    assert count(default, nn.Dropout) == 2 * 6 + 1

    assert count(dualfuse.create_model("drifa_net", mc_dropout="head"), nn.Dropout) == 1
    no_mfa = dualfuse.create_model("drifa_net", use_mfa=False)
    assert count(no_mfa, MFA) == 0 and count(no_mfa, MIFA) == 8
    no_mifa = dualfuse.create_model("drifa_net", use_mifa=False)
    assert count(no_mifa, MIFA) == 0 and count(no_mifa, MFA) == count(default, MFA)
    no_hifa = dualfuse.create_model("drifa_net", use_hifa=False)
    assert count(no_hifa, HIFA) == 0 and count(no_hifa, CLIA) == count(default, MFA)
    no_clia = dualfuse.create_model("drifa_net", use_clia=False)
    assert count(no_clia, CLIA) == 0 and count(no_clia, HIFA) == count(default, MFA)
    no_mgifa = dualfuse.create_model("drifa_net", use_mgifa=False)
    assert count(no_mgifa, MGIFA) == 0 and count(no_mgifa, MLIFA) == 8
    no_mlifa = dualfuse.create_model("drifa_net", use_mlifa=False)
    assert count(no_mlifa, MLIFA) == 0 and count(no_mlifa, MGIFA) == 8


def test_drifa_net_branches_do_not_share_weights():
    model = dualfuse.create_model("drifa_net", modalities=3)
    pointers = [{p.data_ptr() for p in branch.parameters()} for branch in model.branches]
    assert not (pointers[0] & pointers[1]) and not (pointers[1] & pointers[2])


def test_timm_backbone_drifa_inserts_mfa_and_mifa_per_stage():
    model = dualfuse.create_model("drifa_net", backbone="resnet18", modalities=2)
    assert count(model, MIFA) == 4  # resnet18 stage ends: layer1..layer4
    assert count(model, MFA) == 2 * 4
    assert count(model, nn.Dropout) == 2 * 3 + 1


def test_registry():
    assert dualfuse.list_models() == ["concat_fusion", "dcat", "drifa_net", "multitask", "timm_classifier"]
    with pytest.raises(ValueError, match="unknown model 'dcat2'.*available: concat_fusion, dcat"):
        dualfuse.create_model("dcat2")
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet_does_not_exist'"):
        dualfuse.create_model("timm_classifier", backbone="resnet_does_not_exist")
