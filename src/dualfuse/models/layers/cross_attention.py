"""Bidirectional cross-attention between two feature maps of the same scale (DCAT).

DCAT fuses EfficientNet-B4 and ResNet-34 maps "by a bidirectional cross-attention mechanism" [paper];
the block layout (pre-LayerNorm, multi-head, residual, optional MLP, optional key/value pooling) is
ours, see `docs/models.md`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

DIRECTIONS = ("both", "eff_to_res", "res_to_eff", "none")


class CrossAttention(nn.Module):
    """One direction: tokens of `x` attend to tokens of `context`; the result is added back to `x`.

    Args:
        dim: channels of both maps.
        num_heads: attention heads (`dim` must divide by it).
        kv_pool: average-pool the context map by this factor before it becomes keys and values, which
            cuts the quadratic cost on large maps (stride 8 at 380 px is 2304 tokens). 1 = no pooling.
        mlp_ratio: hidden width of a residual MLP after attention, as a multiple of `dim`; 0 = no MLP.
    """

    def __init__(self, dim: int, num_heads: int = 8, kv_pool: int = 1, mlp_ratio: float = 0.0,
                 qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cross-attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.kv_pool = kv_pool
        self.attn_drop = attn_drop
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.mlp = None
        if mlp_ratio > 0:
            self.norm_mlp = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, dim, height, width = x.shape
        if self.kv_pool > 1 and min(context.shape[-2:]) > self.kv_pool:
            context = F.avg_pool2d(context, self.kv_pool, ceil_mode=True, count_include_pad=False)
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        context = context.flatten(2).transpose(1, 2)  # (B, M, C)

        head_dim = dim // self.num_heads
        q = self.q(self.norm_q(tokens)).reshape(batch, -1, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.kv(self.norm_kv(context)).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        tokens = tokens + self.proj(attended.transpose(1, 2).reshape(batch, -1, dim))
        if self.mlp is not None:
            tokens = tokens + self.mlp(self.norm_mlp(tokens))
        return tokens.transpose(1, 2).reshape(batch, dim, height, width)


class BidirectionalCrossAttention(nn.Module):
    """E attends to R and R attends to E, with separate weights per direction.

    Both directions read the *input* maps (not each other's updated map), so the result does not
    depend on an arbitrary order. `direction` switches one or both off for ablations.
    """

    def __init__(self, dim: int, num_heads: int = 8, direction: str = "both", kv_pool: int = 1,
                 mlp_ratio: float = 0.0):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction = direction
        use_eff = direction in ("both", "eff_to_res")
        use_res = direction in ("both", "res_to_eff")
        # "eff_to_res": EfficientNet queries attend to ResNet keys/values (the EfficientNet map is updated).
        self.eff_attends_res = CrossAttention(dim, num_heads, kv_pool, mlp_ratio) if use_eff else None
        self.res_attends_eff = CrossAttention(dim, num_heads, kv_pool, mlp_ratio) if use_res else None

    def forward(self, eff: torch.Tensor, res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new_eff = self.eff_attends_res(eff, res) if self.eff_attends_res is not None else eff
        new_res = self.res_attends_eff(res, eff) if self.res_attends_eff is not None else res
        return new_eff, new_res
