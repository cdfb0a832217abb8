"""The paper modules compute the formulas in shared/design/models.md."""
from __future__ import annotations

import math

import torch

from dualfuse.models.layers import CLIA, HIFA, MFA, MGIFA, MIFA, MLIFA, BidirectionalCrossAttention, CrossAttention


def gap(x):
    return x.mean(dim=(2, 3), keepdim=True)


def gmp(x):
    return x.amax(dim=(2, 3), keepdim=True)


def gminp(x):
    return x.amin(dim=(2, 3), keepdim=True)


def test_hifa_formula():
    hifa, x = HIFA(6), torch.randn(2, 6, 5, 7)
    s = torch.sigmoid
    g1 = s(hifa.conv1(x))
    g2 = s(hifa.conv2(g1))
    g3 = s(hifa.conv3(g1 + g2))
    g4 = s(hifa.conv4(g3))
    s1, s2 = gap(g1) + gmp(g2), gap(g3) + gmp(g4)
    expected = s(hifa.fc(torch.cat([s1, s2], 1).flatten(1)))[:, :, None, None]
    assert torch.allclose(hifa(x), expected) and hifa(x).shape == (2, 6, 1, 1)


def test_clia_formula():
    clia, x = CLIA(6), torch.randn(2, 6, 5, 7)
    l1 = gap(torch.sigmoid(clia.conv1(x)))
    assert torch.allclose(clia(x), l1 + torch.sigmoid(clia.conv2(l1)))


def test_mfa_formula_with_learned_scales():
    mfa, x = MFA(6), torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        mfa.global_scale.fill_(0.5)
        mfa.local_scale.uniform_()
        mfa.alpha.uniform_()
    attention = torch.sigmoid(0.5 * mfa.hifa(x) + mfa.local_scale * mfa.clia(x))
    assert torch.allclose(mfa(x), x * attention * mfa.alpha)
    only_local = MFA(6, use_hifa=False)
    assert torch.allclose(only_local(x), x * torch.sigmoid(only_local.clia(x)))


def test_mgifa_mlifa_mifa_formulas_for_three_modalities():
    xs = [torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 5), torch.randn(2, 4, 6, 6)]
    mgifa = MGIFA(4)
    expected_g = sum(torch.sigmoid(mgifa.fc(sum(pool(x) for x in xs).flatten(1))) for pool in (gminp, gap, gmp))
    assert torch.allclose(mgifa(xs), expected_g[:, :, None, None])

    mlifa = MLIFA(4, 3)
    hs = [torch.sigmoid(conv(x)) for conv, x in zip(mlifa.convs, xs)]
    assert torch.allclose(mlifa(xs), sum(pool(h) for pool in (gminp, gap, gmp) for h in hs))

    mifa = MIFA(4, 3)
    with torch.no_grad():
        mifa.alpha.uniform_()
    attention = torch.sigmoid(mifa.mgifa(xs) + mifa.mlifa(xs))
    for out, x, alpha in zip(mifa(xs), xs, mifa.alpha):
        assert torch.allclose(out, x * attention * alpha)


def test_mifa_with_one_modality():
    mifa, x = MIFA(4, 1), torch.randn(2, 4, 5, 5)
    (out,) = mifa([x])
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_cross_attention_matches_explicit_softmax_attention():
    torch.manual_seed(0)
    block = CrossAttention(dim=8, num_heads=2).eval()
    x, context = torch.randn(1, 8, 3, 4), torch.randn(1, 8, 2, 5)
    tokens, ctx = x.flatten(2).transpose(1, 2), context.flatten(2).transpose(1, 2)
    q = block.q(block.norm_q(tokens)).reshape(1, 12, 2, 4).transpose(1, 2)
    k, v = block.kv(block.norm_kv(ctx)).reshape(1, 10, 2, 2, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(1, 12, 8)
    expected = (tokens + block.proj(attended)).transpose(1, 2).reshape(1, 8, 3, 4)
    assert torch.allclose(block(x, context), expected, atol=1e-5)


def test_bidirectional_directions_read_the_input_maps():
    block = BidirectionalCrossAttention(8, num_heads=2).eval()
    eff, res = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 3, 3)
    new_eff, new_res = block(eff, res)
    assert torch.allclose(new_eff, block.eff_attends_res(eff, res))
    assert torch.allclose(new_res, block.res_attends_eff(res, eff))


def test_kv_pool_shrinks_the_context():
    block = CrossAttention(dim=8, num_heads=2, kv_pool=2).eval()
    x = torch.randn(1, 8, 8, 8)
    pooled = torch.nn.functional.avg_pool2d(x, 2)
    unpooled = CrossAttention(dim=8, num_heads=2).eval()
    unpooled.load_state_dict(block.state_dict())
    assert torch.allclose(block(x, x), unpooled(x, pooled), atol=1e-6)
