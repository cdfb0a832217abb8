"""DCAT: dual cross-attention fusion of EfficientNet-B4 and ResNet-34 (Borah & Singh, arXiv 2503.11851).

Reading top to bottom (see `docs/models.md`; [paper] stated, [ours] our choice):

1. Two CNN trunks see the same image. Taps at strides 8 and 16 [paper]: EfficientNet-B4 blocks 3
   and 4 (timm `blocks.2` 56 ch, `blocks.3` 112 ch) and ResNet-34 `layer2` (128 ch) and `layer3`
   (256 ch). Deeper stages never run and are dropped (`truncate=True`) [ours].
2. Per scale (`DualCrossAttentionFusion`): 1x1 projection of both maps to `embed_dim`,
   bidirectional cross-attention, concatenation + 1x1 fusion, enhanced-CBAM refinement [ours].
3. Multi-scale merge: average + max pooling of each scale, concatenated [ours].
4. Head: Dropout → Linear(256) → ReLU → Dropout → Linear(classes) [ours]. By default all dropout
   sits here (the paper's MC dropout is in the head), so MC dropout runs the fused descriptor once
   (`forward_deterministic`) and samples only the head (`forward_stochastic`).
5. Fusion dropout (`fusion_drop_rate > 0`) [ours]: the paper puts MC dropout in the head; this
   variant samples the fusion too. Element-wise dropout on every scale's refined fusion map (after
   the enhanced CBAM), so MC samples vary the fused representation, not only the head. The
   deterministic part is then the two trunks' tap maps, and the stochastic part runs the fusions,
   their dropout, the merge and the head (costlier per sample). At 0 (default) no module is added:
   the state dict and the split are those of the head-only model.

Small inputs: images whose shorter side is below `min_input_size` (default 32) are bilinearly
upsampled first, so the stride-16 maps are at least 2x2. When an odd input size gives the two
trunks maps of different size, the ResNet map is resized to the EfficientNet map's size.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

from dualfuse.models.backbone import Pretrained, create_feature_taps, resolve_pretrained
from dualfuse.models.base import IMAGE_MAP, PaperReference, single_task
from dualfuse.models.heads import ClassifierHead, SingleHeadModel, global_avg_max
from dualfuse.models.inputs import check_image, upsample_to_min_size
from dualfuse.models.layers import BidirectionalCrossAttention, EnhancedCbam
from dualfuse.models.registry import register_model

MERGE_MODES = ("pool", "maps")


class DualCrossAttentionFusion(nn.Module):
    """Fuse one scale: project both maps, cross-attend both ways, concatenate, 1x1 conv, refine."""

    def __init__(self, eff_chs: int, res_chs: int, embed_dim: int = 256, num_heads: int = 8,
                 direction: str = "both", kv_pool: int = 1, mlp_ratio: float = 0.0, refine: str = "enhanced"):
        super().__init__()
        self.proj_eff = ConvNormAct(eff_chs, embed_dim, 1)
        self.proj_res = ConvNormAct(res_chs, embed_dim, 1)
        self.cross_attention = BidirectionalCrossAttention(embed_dim, num_heads, direction, kv_pool, mlp_ratio)
        self.fuse = ConvNormAct(2 * embed_dim, embed_dim, 1)
        self.refine = EnhancedCbam(embed_dim, mode=refine)

    def forward(self, eff: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        if res.shape[-2:] != eff.shape[-2:]:
            res = F.interpolate(res, size=eff.shape[-2:], mode="bilinear", align_corners=False)
        eff, res = self.cross_attention(self.proj_eff(eff), self.proj_res(res))
        return self.refine(self.fuse(torch.cat([eff, res], dim=1)))


class DCAT(SingleHeadModel):
    """Dual cross-attention fusion of two CNNs at several scales, with an MC-dropout head.

    Args:
        num_classes: classes of the single task (2 for binary), or `{task_name: classes}` to name it
            (default name "label"); `forward` returns `{task_name: logits}`.
        in_chans: 1 (grey X-ray, CT, MRI) or 3.
        eff_backbone, res_backbone: timm CNN names; any pair whose taps have matching strides works.
        eff_taps, res_taps: module names to tap, paired by position (one pair per scale). A single
            pair, e.g. `("blocks.3",)` and `("layer3",)`, is the single-scale ablation.
        pretrained: `True` (timm ImageNet weights, online), `False`, a local weights file (one
            backbone only), or `{backbone_name: True | False | path}`.
        truncate: drop the stages after the deepest tap.
        embed_dim: common width after projection. num_heads: attention heads.
        direction: `"both"`, `"eff_to_res"` (EfficientNet queries ResNet), `"res_to_eff"`, `"none"`.
        kv_pool: average-pool keys/values by this factor before attention; an int for every scale or
            one per scale (e.g. `(2, 1)` pools only the stride-8 scale).
        mlp_ratio: residual MLP after each attention (0 = none).
        refine: `"enhanced"` (residual CBAM), `"plain"` (CBAM) or `"none"`.
        merge: `"pool"` (avg+max pool each scale, concatenate) or `"maps"` (pool shallower maps down
            to the deepest scale, concatenate channels, 1x1 conv, avg+max pool).
        head_hidden, drop_rate: head width and dropout probability (MC dropout uses these).
        fusion_drop_rate: dropout probability on each scale's refined fusion map [ours], in [0, 1);
            0 (default) keeps all dropout in the head, where the paper puts it; > 0 makes MC dropout sample
            the fusion too (see 5. above).
        min_input_size: shorter sides below this are upsampled first.
    """

    paper = PaperReference(
        "Borah & Singh (2025), DCAT: dual cross-attention fusion of EfficientNet-B4 and ResNet-34 with "
        "MC-dropout uncertainty", "https://arxiv.org/abs/2503.11851")

    def __init__(
        self,
        num_classes: int | Mapping[str, int] = 2,
        in_chans: int = 3,
        eff_backbone: str = "efficientnet_b4",
        res_backbone: str = "resnet34",
        eff_taps: Sequence[str] = ("blocks.2", "blocks.3"),
        res_taps: Sequence[str] = ("layer2", "layer3"),
        pretrained: Pretrained = False,
        truncate: bool = True,
        embed_dim: int = 256,
        num_heads: int = 8,
        direction: str = "both",
        kv_pool: int | Sequence[int] = 1,
        mlp_ratio: float = 0.0,
        refine: str = "enhanced",
        merge: str = "pool",
        head_hidden: int = 256,
        drop_rate: float = 0.3,
        min_input_size: int = 32,
        fusion_drop_rate: float = 0.0,
    ):
        super().__init__()
        if isinstance(fusion_drop_rate, bool) or not 0 <= fusion_drop_rate < 1:
            raise ValueError(f"fusion_drop_rate is a dropout probability and must be in [0, 1), got {fusion_drop_rate}")
        if len(eff_taps) != len(res_taps) or not eff_taps:
            raise ValueError(f"eff_taps {list(eff_taps)} and res_taps {list(res_taps)} must pair up one-to-one")
        if merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
        if isinstance(pretrained, (str, bytes)) or hasattr(pretrained, "__fspath__"):
            raise ValueError("DCAT has two backbones: give pretrained as {backbone_name: path} for local weights")
        kv_pools = [kv_pool] * len(eff_taps) if isinstance(kv_pool, int) else list(kv_pool)
        if len(kv_pools) != len(eff_taps):
            raise ValueError(f"kv_pool needs one value per scale ({len(eff_taps)}), got {kv_pools}")
        self.task, self.num_classes = single_task(num_classes, "dcat")
        self.tasks = {self.task: self.num_classes}
        self.in_chans = in_chans
        self.merge = merge
        self.min_input_size = min_input_size

        self.eff = create_feature_taps(eff_backbone, eff_taps, resolve_pretrained(pretrained, eff_backbone),
                                       in_chans, truncate)
        self.res = create_feature_taps(res_backbone, res_taps, resolve_pretrained(pretrained, res_backbone),
                                       in_chans, truncate)
        if self.eff.reductions != self.res.reductions:
            raise ValueError(
                f"tap strides must match pairwise: {eff_backbone} {list(eff_taps)} at {self.eff.reductions}, "
                f"{res_backbone} {list(res_taps)} at {self.res.reductions}"
            )
        self.fusions = nn.ModuleList(
            DualCrossAttentionFusion(e, r, embed_dim, num_heads, direction, pool, mlp_ratio, refine)
            for e, r, pool in zip(self.eff.channels, self.res.channels, kv_pools)
        )
        # Only with fusion dropout: a model without it keeps exactly the head-only module tree and state dict.
        self.fusion_drop_rate = float(fusion_drop_rate)
        if self.fusion_drop_rate > 0:
            self.fusion_drops = nn.ModuleList(nn.Dropout(self.fusion_drop_rate) for _ in self.fusions)
        self.merge_conv = ConvNormAct(embed_dim * len(self.fusions), embed_dim, 1) if merge == "maps" else None
        self.num_features = 2 * embed_dim * (len(self.fusions) if merge == "pool" else 1)
        self.head = ClassifierHead(self.num_features, self.num_classes, head_hidden, drop_rate)

    def trunk_taps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The two trunks' tap maps `(eff maps, res maps)`, one per scale: everything before any dropout."""
        x = upsample_to_min_size(check_image(x, self.in_chans), self.min_input_size)
        return list(self.eff(x)), list(self.res(x))

    def fuse_taps(self, taps: tuple[list[torch.Tensor], list[torch.Tensor]]) -> torch.Tensor:
        """Fuse every scale (then fusion dropout, when on) and merge: the fused descriptor (B, num_features)."""
        eff_maps, res_maps = taps
        fused = [fusion(e, r) for fusion, e, r in zip(self.fusions, eff_maps, res_maps)]
        if self.fusion_drop_rate > 0:
            fused = [drop(f) for drop, f in zip(self.fusion_drops, fused)]
        if self.merge == "pool":
            return torch.cat([global_avg_max(f) for f in fused], dim=1)
        size = fused[-1].shape[-2:]
        maps = [F.adaptive_avg_pool2d(f, size) if f.shape[-2:] != size else f for f in fused]
        return global_avg_max(self.merge_conv(torch.cat(maps, dim=1)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused descriptor (B, num_features): everything before the head (deterministic unless
        `fusion_drop_rate > 0`, whose dropout acts in training and MC sampling only)."""
        return self.fuse_taps(self.trunk_taps(x))

    def forward_deterministic(self, x: torch.Tensor):
        """Everything before the first dropout: the fused descriptor, or with fusion dropout the trunk taps."""
        if self.fusion_drop_rate > 0:
            return self.trunk_taps(x)
        return self.forward_features(x)

    def forward_stochastic(self, state) -> dict[str, torch.Tensor]:
        """The rest: the head, or with fusion dropout the fusions, their dropout, the merge and the head."""
        if self.fusion_drop_rate > 0:
            return self.forward_head(self.fuse_taps(state))
        return self.forward_head(state)

    def cam_target_layers(self) -> dict[str, list[nn.Module]]:
        """The enhanced-CBAM output of every fusion scale, averaged: the fused maps the head pools."""
        return {IMAGE_MAP: [fusion.refine for fusion in self.fusions]}


@register_model
def dcat(**kwargs) -> DCAT:
    """DCAT: EfficientNet-B4 + ResNet-34, bidirectional cross-attention at strides 8/16, enhanced CBAM."""
    return DCAT(**kwargs)
