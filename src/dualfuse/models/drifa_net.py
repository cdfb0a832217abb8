"""DRIFA-Net: dual robust information fusion attention (Dhar et al., WACV 2025, arXiv 2412.01248).

Reading top to bottom (see `docs/models.md`; [code] = the authors' notebooks):

1. One branch per modality, no weight sharing. The default branch is the notebooks' RRA-18 [code]:
   stem conv7x7/2 → MFA → BN → ReLU → maxpool, then eight RRA blocks (widths 64, 64, 128/2, 128,
   256/2, 256, 512/2, 512). After blocks 1–6: Dropout → MFA; after block 7: MFA; block 8: nothing.
   With `backbone=<timm name>` the branch is that CNN cut at its stage ends, with Dropout → MFA
   after every stage but the last, and MFA after the last [ours].
2. After every block (stage) the M branches pass together through one MIFA [code], which is
   where the modalities exchange information.
3. Head: per-branch Dropout → global average pooling, concatenated → one Linear per task [code].

MC dropout (`mc_dropout`): `"paper"` keeps the branch dropouts above (MC sampling must then rerun
everything after block 1); `"head"` keeps only the head dropout, so the whole trunk is
deterministic and MC sampling re-runs only the heads. `forward_deterministic` /
`forward_stochastic` expose that split for either placement.

Sizes: every strided layer pads, so maps never become empty; at 28 px the last RRA maps are 1x1.
Modalities may have different image sizes (MIFA pools globally).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial

import torch
from torch import nn

from dualfuse.models.backbone import Pretrained, create_feature_taps, resolve_pretrained
from dualfuse.models.base import DualfuseModel, PaperReference, task_classes
from dualfuse.models.inputs import collect_modalities, modality_names, per_modality
from dualfuse.models.layers import MFA, MIFA, RRABlock
from dualfuse.models.registry import register_model

MC_DROPOUT_PLACEMENTS = ("paper", "head")
RRA18_WIDTHS = (64, 64, 128, 128, 256, 256, 512, 512)
RRA18_STRIDES = (1, 1, 2, 1, 2, 1, 2, 1)


class DRIFABranch(nn.Module):
    """One modality's branch as a list of stages, each followed by a dropout slot and an MFA slot.

    Unused slots hold `nn.Identity`, so every branch has the same step structure and the model can
    interleave MIFA between stages.
    """

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], drops: Sequence[nn.Module],
                 attns: Sequence[nn.Module], num_features: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.drops = nn.ModuleList(drops)
        self.attns = nn.ModuleList(attns)
        self.num_features = num_features


def _dropout(enabled: bool, p: float) -> nn.Module:
    return nn.Dropout(p) if enabled else nn.Identity()


def _attention(factory: Callable[[int], nn.Module] | None, channels: int) -> nn.Module:
    return factory(channels) if factory else nn.Identity()


def rra18_branch(in_chans: int, mfa: Callable[[int], nn.Module] | None, branch_dropout: bool,
                 drop_rate: float) -> tuple[DRIFABranch, list[int]]:
    """The notebooks' per-modality ResNet-18 layout of RRA blocks [code]."""
    stem = nn.Sequential(
        nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False),
        _attention(mfa, 64),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    stages, drops, attns = [], [], []
    in_chs = 64
    for index, (width, stride) in enumerate(zip(RRA18_WIDTHS, RRA18_STRIDES)):
        stages.append(RRABlock(in_chs, width, stride, attn_layer=mfa))
        drops.append(_dropout(branch_dropout and index < 6, drop_rate))
        attns.append(_attention(mfa, width) if index < 7 else nn.Identity())
        in_chs = width
    return DRIFABranch(stem, stages, drops, attns, in_chs), list(RRA18_WIDTHS)


def timm_branch(backbone: str, in_chans: int, pretrained: bool | str, mfa: Callable[[int], nn.Module] | None,
                branch_dropout: bool, drop_rate: float) -> tuple[DRIFABranch, list[int]]:
    """Any timm CNN cut at its stage ends, with MFA after every stage [ours]."""
    trunk = create_feature_taps(backbone, None, pretrained, in_chans)
    last = len(trunk.stages) - 1
    drops = [_dropout(branch_dropout and i < last, drop_rate) for i in range(len(trunk.stages))]
    attns = [_attention(mfa, chs) for chs in trunk.channels]
    return DRIFABranch(nn.Identity(), list(trunk.stages), drops, attns, trunk.channels[-1]), trunk.channels


class DRIFANet(DualfuseModel):
    """Multimodal fusion with dual (per-branch MFA and cross-branch MIFA) attention and multitask heads.

    Args:
        num_classes: one int (one task named "label"), a list (tasks "task0", ...) or
            `{task_name: classes}`. `forward` returns `{task_name: logits}`.
        modalities: the number of modalities or their names; `forward` takes one tensor per modality
            as a list in this order or a dict keyed by these names.
        in_chans: channels, one int for all modalities or one per modality (1 or 3).
        backbone: `"rra18"` (the notebooks' branch) or a timm CNN name.
        pretrained: for a timm backbone: `True`, `False`, a local weights file, or `{name: ...}`.
        drop_rate: the branch dropout after blocks 1–6 [code: 0.25]. head_drop_rate: before the heads.
        mc_dropout: `"paper"` (branch + head dropout) or `"head"` (head dropout only).
        use_mfa, use_hifa, use_clia, use_mifa, use_mgifa, use_mlifa: ablation switches.
    """

    paper = PaperReference(
        "Dhar et al. (WACV 2025), DRIFA-Net: multimodal fusion learning with dual attention and ensemble "
        "MC dropout", "https://arxiv.org/abs/2412.01248")
    inputs = "modalities"

    def __init__(
        self,
        num_classes: int | Sequence[int] | Mapping[str, int] = 2,
        modalities: int | Sequence[str] = 2,
        in_chans: int | Sequence[int] = 3,
        backbone: str = "rra18",
        pretrained: Pretrained = False,
        drop_rate: float = 0.25,
        head_drop_rate: float = 0.25,
        mc_dropout: str = "paper",
        use_mfa: bool = True,
        use_hifa: bool = True,
        use_clia: bool = True,
        use_mifa: bool = True,
        use_mgifa: bool = True,
        use_mlifa: bool = True,
    ):
        super().__init__()
        if mc_dropout not in MC_DROPOUT_PLACEMENTS:
            raise ValueError(f"mc_dropout must be one of {MC_DROPOUT_PLACEMENTS}, got {mc_dropout!r}")
        self.modalities = modality_names(modalities)
        self.in_chans = per_modality(in_chans, self.modalities, "in_chans")
        self.tasks = task_classes(num_classes)
        self.backbone = backbone
        self.mc_dropout = mc_dropout
        num_modalities = len(self.modalities)

        mfa = partial(MFA, use_hifa=use_hifa, use_clia=use_clia) if use_mfa else None
        branch_dropout = mc_dropout == "paper"
        branches = []
        for chans in self.in_chans:
            if backbone == "rra18":
                branch, widths = rra18_branch(chans, mfa, branch_dropout, drop_rate)
            else:
                weights = resolve_pretrained(pretrained, backbone)
                branch, widths = timm_branch(backbone, chans, weights, mfa, branch_dropout, drop_rate)
            branches.append(branch)
        self.branches = nn.ModuleList(branches)
        self.fusions = nn.ModuleList(
            MIFA(width, num_modalities, use_mgifa, use_mlifa) if use_mifa else nn.Identity() for width in widths
        )
        self.num_features = sum(branch.num_features for branch in self.branches)
        self.head_drop = nn.Dropout(head_drop_rate)
        self.heads = nn.ModuleDict({task: nn.Linear(self.num_features, n) for task, n in self.tasks.items()})
        # MC sampling starts at the first stochastic step; with mc_dropout="head" that is the head.
        steps = list(self._steps())
        self._first_stochastic_step = next(
            (i for i, (kind, modules) in enumerate(steps) if kind == "branch" and isinstance(modules[0], nn.Dropout)),
            len(steps),
        )

    def _steps(self) -> Iterator[tuple[str, list[nn.Module] | nn.Module]]:
        """The trunk in execution order: per-branch steps (one module per modality) and joint MIFA steps."""
        yield "branch", [branch.stem for branch in self.branches]
        for i, fusion in enumerate(self.fusions):
            yield "branch", [branch.stages[i] for branch in self.branches]
            yield "branch", [branch.drops[i] for branch in self.branches]
            yield "branch", [branch.attns[i] for branch in self.branches]
            yield "joint", fusion

    def _run_steps(self, xs: list[torch.Tensor], start: int, stop: int | None) -> list[torch.Tensor]:
        for kind, modules in list(self._steps())[start:stop]:
            if kind == "joint":
                xs = list(modules(xs)) if not isinstance(modules, nn.Identity) else xs
            else:
                xs = [module(x) for module, x in zip(modules, xs)]
        return xs

    def forward_deterministic(self, inputs) -> list[torch.Tensor]:
        """Everything before the first dropout: per-modality maps, computed once for MC sampling."""
        xs = collect_modalities(inputs, self.modalities, self.in_chans)
        return self._run_steps(xs, 0, self._first_stochastic_step)

    def forward_stochastic(self, state: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The rest, from the first dropout to the task logits."""
        return self.forward_head(self._run_steps(list(state), self._first_stochastic_step, None))

    def forward_features(self, inputs) -> list[torch.Tensor]:
        """Per-modality final maps (after the last MIFA)."""
        xs = collect_modalities(inputs, self.modalities, self.in_chans)
        return self._run_steps(xs, 0, None)

    def forward_head(self, maps: Sequence[torch.Tensor], pre_logits: bool = False):
        """Dropout → global average pooling per modality, concatenated → one Linear per task."""
        pooled = torch.cat([self.head_drop(x).mean(dim=(2, 3)) for x in maps], dim=1)
        if pre_logits:
            return pooled
        return {task: head(pooled) for task, head in self.heads.items()}

    def forward(self, inputs) -> dict[str, torch.Tensor]:
        return self.forward_stochastic(self.forward_deterministic(inputs))

    def cam_target_layers(self) -> dict[str, list[nn.Module]]:
        """Per modality, the last stage of its branch (before the final MIFA): one map per modality."""
        return {name: [branch.stages[-1]] for name, branch in zip(self.modalities, self.branches)}


@register_model
def drifa_net(**kwargs) -> DRIFANet:
    """DRIFA-Net: per-modality RRA-18 branches with MFA, cross-modal MIFA after every block, multitask heads."""
    return DRIFANet(**kwargs)
