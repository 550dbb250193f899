"""Mechanism tests for Non-local (nl), Transformer self-attention (mhsa), GCNet (gc) and PSANet (psa).

Each compares the module with a naive reference written from the paper / official code (explicit
loops over pixels, dense softmax), or checks a property the paper states.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segattn.models.attention import build_attention
from segattn.models.attention.mhsa import sinusoidal_encoding_2d
from segattn.models.attention.psa import psa_mask, shrunk_grid
from segattn.models.heads import build_head


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(module: nn.Module, std: float = 0.3) -> None:
    """Give every parameter a non-trivial value (undoing zero inits) so references are not vacuous."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


# --------------------------------------------------------------------------- Non-local


def test_nl_starts_as_identity():
    x = torch.randn(2, 16, 5, 7)
    for use_bn in (True, False):
        m = build_attention("nl", 16, use_bn=use_bn)
        for train in (True, False):
            m.train(train)
            torch.testing.assert_close(m(x), x, rtol=0, atol=0)


def test_nl_inner_channels_are_half():
    m = build_attention("nl", 32)
    assert m.inter_channels == 16
    assert m.theta.weight.shape == (16, 32, 1, 1)
    assert m.phi.weight.shape == (16, 32, 1, 1)
    assert m.g.weight.shape == (16, 32, 1, 1)
    assert m.conv_out[0].weight.shape == (32, 16, 1, 1)
    assert build_attention("nl", 32, reduction=4).inter_channels == 8


def _conv1x1(conv: nn.Conv2d, v: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv applied to one pixel's feature vector."""
    out = conv.weight[:, :, 0, 0] @ v
    return out if conv.bias is None else out + conv.bias


def _naive_nl(m, x: torch.Tensor) -> torch.Tensor:
    """Eq. 1 with explicit sums over j, then z = x + BN(W_z y) with BN in eval mode (sub-sampling: mmcv's
    floor-mode 2x2 max pool)."""
    n, c, h, w = x.shape
    keys_map = F.max_pool2d(x, 2) if m.sub_sample else x
    kh, kw = keys_map.shape[2:]
    out = torch.empty_like(x)
    for b in range(n):
        for i in range(h * w):
            xi = x[b, :, i // w, i % w]
            theta_i = _conv1x1(m.theta, xi) if m.mode != "gaussian" else xi
            logits, values = [], []
            for j in range(kh * kw):
                if m.sub_sample:
                    phi_j = F.max_pool2d(m.phi(x[b : b + 1]), 2)[0, :, j // kw, j % kw]
                    g_j = F.max_pool2d(m.g(x[b : b + 1]), 2)[0, :, j // kw, j % kw]
                else:
                    xj = x[b, :, j // w, j % w]
                    phi_j = _conv1x1(m.phi, xj) if m.mode != "gaussian" else xj
                    g_j = _conv1x1(m.g, xj)
                logits.append(theta_i @ phi_j)
                values.append(g_j)
            logits, values = torch.stack(logits), torch.stack(values)
            if m.mode == "dot_product":
                weights = logits / len(logits)
            else:
                if m.use_scale and m.mode == "embedded_gaussian":
                    logits = logits / math.sqrt(m.inter_channels)
                weights = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
            y = (weights[:, None] * values).sum(0)
            conv, bn = m.conv_out
            wy = conv.weight[:, :, 0, 0] @ y
            wy = (wy - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
            out[b, :, i // w, i % w] = xi + wy
    return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(use_scale=False),
        dict(mode="dot_product"),
        dict(mode="gaussian"),
        dict(sub_sample=True),
    ],
)
def test_nl_matches_naive_reference(kw):
    m = build_attention("nl", 8, **kw).eval()
    _randomize(m)
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _naive_nl(m, x), rtol=1e-4, atol=1e-5)


def test_nl_use_scale_changes_the_softmax_temperature():
    m = build_attention("nl", 8).eval()
    _randomize(m, std=1.0)
    x = torch.randn(1, 8, 3, 4)
    with torch.no_grad():
        scaled = m.pairwise(x)
        m.use_scale = False
        unscaled = m.pairwise(x)
    torch.testing.assert_close(scaled.sum(-1), torch.ones(1, 12))
    # Dividing logits by sqrt(C') > 1 flattens every row: its largest weight can only shrink.
    assert (scaled.amax(-1) <= unscaled.amax(-1) + 1e-6).all()
    assert not torch.allclose(scaled, unscaled)


@pytest.mark.parametrize("kw", [dict(reduction=0), dict(reduction=1.5), dict(mode="concat")])
def test_nl_bad_hyper_parameters(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        build_attention("nl", 16, **kw)


# --------------------------------------------------------------------------- MHSA


def _naive_pe(c: int, h: int, w: int) -> torch.Tensor:
    """Paper Sec. 3.5 per channel: first c//2 channels on the row index, the rest on the column."""
    pe = torch.empty(c, h, w)
    cy = c // 2
    for ch in range(c):
        d, k = (cy, ch) if ch < cy else (c - cy, ch - cy)
        for y in range(h):
            for x in range(w):
                pos = y if ch < cy else x
                angle = pos / 10000 ** (2 * (k // 2) / d)
                pe[ch, y, x] = math.sin(angle) if k % 2 == 0 else math.cos(angle)
    return pe


@pytest.mark.parametrize("c,h,w", [(16, 3, 5), (10, 4, 2), (7, 2, 3)])
def test_mhsa_positional_encoding_formula(c, h, w):
    pe = sinusoidal_encoding_2d(c, h, w)
    torch.testing.assert_close(pe, _naive_pe(c, h, w), rtol=1e-5, atol=1e-5)
    # Row channels do not vary along x, column channels not along y.
    cy = c // 2
    assert torch.equal(pe[:cy], pe[:cy, :, :1].expand_as(pe[:cy]))
    assert torch.equal(pe[cy:], pe[cy:, :1, :].expand_as(pe[cy:]))


def _naive_mhsa(m, x: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) V per head with an explicit score matrix, then Add & Norm, FFN."""
    n, c, h, w = x.shape
    tokens = (x + _naive_pe(c, h, w)).flatten(2).transpose(1, 2)  # (N, L, C)
    q = tokens @ m.query.weight.t() + m.query.bias
    k = tokens @ m.key.weight.t() + m.key.bias
    v = tokens @ m.value.weight.t() + m.value.bias
    d = c // m.num_heads
    heads = []
    for head in range(m.num_heads):
        sl = slice(head * d, (head + 1) * d)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    attn = torch.cat(heads, dim=-1) @ m.out.weight.t() + m.out.bias

    def layer_norm(t, ln):
        mu = t.mean(-1, keepdim=True)
        var = t.var(-1, unbiased=False, keepdim=True)
        return (t - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    z = layer_norm(tokens + attn, m.norm1)
    fc1, fc2 = m.ffn[0], m.ffn[2]
    ffn = torch.clamp(z @ fc1.weight.t() + fc1.bias, min=0) @ fc2.weight.t() + fc2.bias
    out = layer_norm(z + ffn, m.norm2)
    return out.transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_mhsa_matches_naive_attention(num_heads):
    m = build_attention("mhsa", 16, num_heads=num_heads).eval()
    _randomize(m)
    x = torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _naive_mhsa(m, x), rtol=1e-4, atol=1e-4)


def test_mhsa_ffn_width_and_heads():
    m = build_attention("mhsa", 32)
    assert m.num_heads == 8 and m.head_dim == 4
    assert m.ffn[0].out_features == 4 * 32 and m.ffn[2].in_features == 4 * 32
    assert build_attention("mhsa", 32, ffn_ratio=2).ffn[0].out_features == 64


def test_mhsa_positional_encoding_breaks_permutation_equivariance():
    x = torch.randn(1, 16, 4, 4)
    perm = torch.randperm(16)

    def permute(t):
        return t.flatten(2)[:, :, perm].view_as(t)

    plain = build_attention("mhsa", 16, num_heads=4, pos_encoding=False).eval()
    with torch.no_grad():
        # Without PE self-attention is a set operation: permuting pixels permutes the output.
        torch.testing.assert_close(plain(permute(x)), permute(plain(x)), rtol=1e-4, atol=1e-5)
        with_pe = build_attention("mhsa", 16, num_heads=4).eval()
        with_pe.load_state_dict(plain.state_dict())
        assert not torch.allclose(with_pe(permute(x)), permute(with_pe(x)), atol=1e-3)


def test_mhsa_num_heads_must_divide_channels():
    with pytest.raises(ValueError, match="num_heads"):
        build_attention("mhsa", 30, num_heads=8)
    with pytest.raises(ValueError, match="num_heads"):
        build_attention("mhsa", 32, num_heads=0)


# --------------------------------------------------------------------------- GCNet


def test_gc_starts_as_identity_and_is_a_bottleneck_of_ratio_one_quarter():
    m = build_attention("gc", 32)
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)
    t = m.channel_add_conv
    assert t[0].out_channels == 8 and t[3].in_channels == 8
    assert isinstance(t[1], nn.LayerNorm) and tuple(t[1].normalized_shape) == (8, 1, 1)
    assert m.channel_mul_conv is None


def _naive_transform(t: nn.Sequential, ctx: torch.Tensor) -> torch.Tensor:
    conv1, ln, _, conv2 = t
    hidden = conv1.weight[:, :, 0, 0] @ ctx + conv1.bias
    hidden = (hidden - hidden.mean()) / torch.sqrt(hidden.var(unbiased=False) + ln.eps)
    hidden = hidden * ln.weight.flatten() + ln.bias.flatten()
    return conv2.weight[:, :, 0, 0] @ torch.clamp(hidden, min=0) + conv2.bias


@pytest.mark.parametrize("fusion_types", [["channel_add"], ["channel_mul"], ["channel_add", "channel_mul"]])
def test_gc_matches_naive_reference(fusion_types):
    m = build_attention("gc", 16, fusion_types=fusion_types).eval()
    _randomize(m)
    x = torch.randn(2, 16, 3, 4)
    with torch.no_grad():
        out = m(x)
        for b in range(2):
            pixels = x[b].flatten(1)  # (C, HW)
            w_k, b_k = m.conv_mask.weight[0, :, 0, 0], m.conv_mask.bias[0]
            logits = torch.stack([w_k @ pixels[:, j] + b_k for j in range(12)])
            weights = torch.exp(logits) / torch.exp(logits).sum()
            ctx = sum(weights[j] * pixels[:, j] for j in range(12))
            ref = x[b]
            if "channel_mul" in fusion_types:
                ref = ref * torch.sigmoid(_naive_transform(m.channel_mul_conv, ctx))[:, None, None]
            if "channel_add" in fusion_types:
                ref = ref + _naive_transform(m.channel_add_conv, ctx)[:, None, None]
            torch.testing.assert_close(out[b], ref, rtol=1e-4, atol=1e-5)


def test_gc_attention_pooling_weights_sum_to_one_and_add_is_position_independent():
    m = build_attention("gc", 16)
    _randomize(m)
    x = torch.randn(2, 16, 5, 6)
    weights = m.spatial_weights(x)
    assert weights.shape == (2, 30)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    delta = m(x) - x  # channel_add: the same vector added at every position
    torch.testing.assert_close(delta, delta[:, :, :1, :1].expand_as(delta), rtol=0, atol=1e-6)


def test_gc_channel_mul_starts_at_half_and_avg_pooling_is_the_mean():
    x = torch.randn(1, 16, 4, 4)
    mul = build_attention("gc", 16, fusion_types=["channel_mul"])
    torch.testing.assert_close(mul(x), 0.5 * x)  # official init: zero last conv -> sigmoid(0)
    avg = build_attention("gc", 16, pooling_type="avg")
    torch.testing.assert_close(avg.context(x), x.mean(dim=(2, 3), keepdim=True))
    assert not hasattr(avg, "conv_mask")


@pytest.mark.parametrize(
    "kw,word",
    [
        (dict(fusion_types=["channel_sub"]), "fusion_types"),
        (dict(fusion_types=[]), "fusion_types"),
        (dict(ratio=1 / 32), "ratio"),
        (dict(pooling_type="max"), "pooling_type"),
    ],
)
def test_gc_bad_hyper_parameters(kw, word):
    with pytest.raises(ValueError, match=word):
        build_attention("gc", 16, **kw)


# --------------------------------------------------------------------------- PSANet


def _naive_psa_mask(mask: torch.Tensor, psa_type: str, mask_h: int, mask_w: int) -> torch.Tensor:
    """Line-by-line port of the official CPU psamask loops (hszhao/semseg, mmcv psamask.cpp)."""
    n, _, h_feat, w_feat = mask.shape
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    buffer = torch.zeros(n, h_feat * w_feat, h_feat * w_feat)
    for b in range(n):
        for h in range(h_feat):
            for w in range(w_feat):
                for hidx in range(max(0, half_h - h), min(mask_h, h_feat + half_h - h)):
                    for widx in range(max(0, half_w - w), min(mask_w, w_feat + half_w - w)):
                        other = (hidx + h - half_h) * w_feat + (widx + w - half_w)
                        value = mask[b, hidx * mask_w + widx, h, w]
                        if psa_type == "collect":
                            buffer[b, other, h * w_feat + w] = value
                        else:
                            buffer[b, h * w_feat + w, other] = value
    return buffer.view(n, h_feat * w_feat, h_feat, w_feat)


@pytest.mark.parametrize("h,w", [(3, 4), (2, 3), (1, 1), (6, 9), (4, 2)])
@pytest.mark.parametrize("psa_type", ["collect", "distribute"])
@pytest.mark.parametrize("mask", [(5, 7), (4, 6)])
def test_psa_mask_matches_official_loop(h, w, psa_type, mask):
    # (6, 9) and (4, 2) are beyond a 5x7 mask's reach (3x4): the official op leaves zeros there.
    # (4, 6): mmseg's ADE20K recipe uses an even mask (66, 66); the op's half is (mask - 1) // 2.
    mask_t = torch.randn(2, mask[0] * mask[1], h, w)
    out = psa_mask(mask_t, psa_type, mask)
    assert out.shape == (2, h * w, h, w)
    torch.testing.assert_close(out, _naive_psa_mask(mask_t, psa_type, *mask), rtol=0, atol=0)
    if (h, w, mask) == (3, 4, (5, 7)):  # the largest map the mask reaches: every pair gets a mask entry
        assert (out != 0).all()
    if (h, w) == (6, 9):
        assert (out == 0).any()


def test_psa_collect_and_distribute_are_transposes():
    mask = torch.randn(1, 5 * 7, 3, 4)
    collect = psa_mask(mask, "collect", (5, 7)).view(1, 12, 12)
    distribute = psa_mask(mask, "distribute", (5, 7)).view(1, 12, 12)
    torch.testing.assert_close(distribute, collect.transpose(1, 2), rtol=0, atol=0)
    assert not torch.equal(distribute, collect)


def test_psa_beyond_its_reach_softmaxes_the_zeros_as_the_official_code():
    """The PSANet Cityscapes recipe: 64x128 features shrink to 32x64, beyond a 97x97 mask's 49x49
    reach. It runs, and out-of-reach pairs take the softmax weight of a logit 0."""
    m = build_attention("psa", 8, mask_size=(5, 5), shrink_factor=1).eval()
    _randomize(m)
    feat = torch.randn(1, m.inner_channels, 4, 7)
    with torch.no_grad():
        a = m.attention_map(feat, "collect")[0]  # [source j, centre i]
        logits = m.attention["collect"](feat)
    # centre i = (0, 0); source j = (0, 6) is 6 columns away, beyond the mask's half-width 2.
    expected = torch.exp(torch.tensor(0.0)) / (torch.exp(psa_mask(logits, "collect", (5, 5))[0, :, 0, 0]).sum())
    torch.testing.assert_close(a[6, 0], expected)
    torch.testing.assert_close(a.sum(dim=0), torch.ones(28))
    head = build_head(dict(name="psa", channels=8, mask_size=[97, 97]), [4, 8, 16, 32], 19).eval()
    with torch.no_grad():
        out = head([None, None, None, torch.randn(1, 32, 64, 128)])
    assert out.shape == (1, 19, 64, 128) and torch.isfinite(out).all()
class _FixedLogits(nn.Module):
    """Stands in for a branch's mask predictor: a large logit at one mask offset, at every position."""

    def __init__(self, mask_size, offset):
        super().__init__()
        self.mask_size, self.offset = mask_size, offset

    def forward(self, feat):
        mh, mw = self.mask_size
        logits = torch.zeros(feat.shape[0], mh * mw, *feat.shape[2:])
        dy, dx = self.offset
        logits[:, (dy + (mh - 1) // 2) * mw + dx + (mw - 1) // 2] = 30.0
        return logits


def test_psa_collect_gathers_and_distribute_sends_along_the_predicted_offset():
    m = build_attention("psa", 8, mask_size=(7, 7), shrink_factor=1)
    feat = torch.randn(1, 8, 4, 4)
    for branch in ("collect", "distribute"):
        m.attention[branch] = _FixedLogits((7, 7), (0, 1))  # every position points to its right neighbour
    collect = (feat.flatten(2) @ m.attention_map(feat, "collect")).view_as(feat)
    distribute = (feat.flatten(2) @ m.attention_map(feat, "distribute")).view_as(feat)
    # collect: position i reads from i + (0, 1).
    torch.testing.assert_close(collect[..., :, :3], feat[..., :, 1:], rtol=0, atol=1e-4)
    # distribute: position i sends to i + (0, 1), so j receives from j - (0, 1).
    torch.testing.assert_close(distribute[..., :, 1:], feat[..., :, :3], rtol=0, atol=1e-4)


def test_psa_attention_is_normalised_over_sources():
    m = build_attention("psa", 8, mask_size=(7, 9), shrink_factor=1).eval()
    _randomize(m)
    feat = torch.randn(2, m.inner_channels, 4, 5)
    with torch.no_grad():
        for branch in ("collect", "distribute"):
            a = m.attention_map(feat, branch)
            assert a.shape == (2, 20, 20)
            torch.testing.assert_close(a.sum(dim=1), torch.ones(2, 20))


def test_psa_normalization_factor_none_divides_by_the_mask_area():
    captured = []

    def run(**kw):
        torch.manual_seed(1)
        m = build_attention("psa", 8, mask_size=(5, 7), shrink_factor=1, **kw).eval()
        m.proj.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
        with torch.no_grad():
            m(torch.randn(1, 8, 3, 4, generator=torch.Generator().manual_seed(2)))

    run()
    run(normalization_factor=None)
    assert captured[0].shape == (1, 2 * 4, 3, 4)  # collect and distribute, C // 2 channels each
    torch.testing.assert_close(captured[1] * 35, captured[0])


def test_psa_branch_structure_and_shrink():
    m = build_attention("psa", 16, mask_size=(5, 5), psa_type="collect")
    assert list(m.reduce) == ["collect"] and m.proj[0].in_channels == 8
    assert m.attention["collect"][1].out_channels == 25
    assert m.fuse[0].in_channels == 32 and m.fuse[0].out_channels == 16
    sizes = []
    m.attention["collect"].register_forward_hook(lambda mod, inp, out: sizes.append(tuple(out.shape[2:])))
    assert m(torch.randn(2, 16, 5, 7)).shape == (2, 16, 5, 7)
    assert m(torch.randn(2, 16, 5, 6)).shape == (2, 16, 5, 6)
    assert m(torch.randn(2, 16, 64, 128)).shape == (2, 16, 64, 128)
    # mmseg's shrink: (H - 1) // 2 + 1 when both sides are odd, else H // 2.
    assert sizes == [(3, 4), (2, 3), (32, 64)]
    assert shrunk_grid(97, 97, 2) == (49, 49, True) and shrunk_grid(64, 128, 2) == (32, 64, False)
    assert shrunk_grid(65, 64, 2) == (32, 32, False) and shrunk_grid(9, 9, 1) == (9, 9, False)


@pytest.mark.parametrize(
    "kw,word",
    [
        (dict(mask_size=(0, 5)), "mask_size"),
        (dict(proj_padding=-1), "proj_padding"),
        (dict(psa_type="both"), "psa_type"),
        (dict(shrink_factor=0), "shrink_factor"),
        (dict(normalization_factor=0), "normalization_factor"),
    ],
)
def test_psa_bad_hyper_parameters(kw, word):
    with pytest.raises(ValueError, match=word):
        build_attention("psa", 16, **kw)
