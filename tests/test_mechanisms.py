"""Each registered mechanism against its paper: Non-local (nl), Transformer self-attention (mhsa), GCNet
(gc), PSANet (psa), DANet (da), OCNet (oc, oc_pyramid, oc_asp), CCNet (cc), EMANet (ema), DNL, ISA,
coordinate attention, APCNet, axial attention, ANN and OCR (the gating ones: test_attention_gating.py).

Each compares the module with a naive reference written from the paper / official code (explicit
loops over pixels, dense softmax), or checks a property the paper states, or what it records for
pictures. Equivalence with mmseg's and the authors' code: test_reference_mmseg_heads.py and
test_reference_official.py; the decode heads: test_heads.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segattn.models.attention import build_attention
from segattn.models.attention import ema as ema_mod
from segattn.models.attention.mhsa import sinusoidal_encoding_2d
from segattn.models.attention.oc import SelfAttentionBlock, _region_bounds
from segattn.models.attention.psa import psa_mask, shrunk_grid
from segattn.models.attention.record import attention_maps, record_attention
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


def _set_gamma(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.fill_(value)


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


# --------------------------------------------------------------------------- DANet


def test_da_identity_at_init_and_branch_sum():
    m = build_attention("da", 16).eval()
    x = torch.randn(2, 16, 5, 7)
    # Both gammas start at zero: each branch is the identity, the module their sum.
    torch.testing.assert_close(m.pam(x), x)
    torch.testing.assert_close(m.cam(x), x)
    torch.testing.assert_close(m(x), 2 * x)
    _set_gamma(m, 0.7)
    torch.testing.assert_close(m(x), m.pam(x) + m.cam(x))
    assert not torch.allclose(m(x), 2 * x)


def test_da_pam_matches_reference():
    m = build_attention("da", 32)
    pam = m.pam
    assert pam.query_conv.out_channels == pam.key_conv.out_channels == 32 // 8
    assert pam.value_conv.out_channels == 32
    _set_gamma(m, 0.5)
    x = torch.randn(2, 32, 4, 6, dtype=torch.float64)
    pam.double()
    q = pam.query_conv(x).flatten(2)  # (N, C', HW)
    k = pam.key_conv(x).flatten(2)
    v = pam.value_conv(x).flatten(2)
    att = torch.softmax(torch.einsum("nci,ncj->nij", q, k), dim=-1)  # over positions j
    ref = 0.5 * torch.einsum("ncj,nij->nci", v, att).view_as(x) + x
    torch.testing.assert_close(pam(x), ref)
    torch.testing.assert_close(pam.attention(x).sum(-1), torch.ones(2, 24, dtype=torch.float64))


def test_da_cam_uses_max_minus_energy():
    m = build_attention("da", 8)
    cam = m.cam
    assert [n for n, _ in cam.named_parameters()] == ["gamma"]  # no convolutions in CAM
    _set_gamma(m, 0.3)
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    f = x.flatten(2)
    energy = f @ f.transpose(1, 2)
    att = torch.softmax(energy.max(-1, keepdim=True).values - energy, dim=-1)
    ref = 0.3 * (att @ f).view_as(x) + x
    torch.testing.assert_close(cam(x), ref)
    # The most similar channel (largest energy: itself) gets the SMALLEST weight.
    a = cam.attention(x)[0]
    assert torch.equal(a.argmin(-1), energy[0].argmax(-1))


# --------------------------------------------------------------------------- OCNet


def _randomise_W(module: nn.Module) -> None:
    """The official W convs start at zero (no context at init); give them weights to test the context."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, SelfAttentionBlock):
                m.W.weight.normal_(0, 0.5)
                m.W.bias.normal_(0, 0.1)


def test_oc_shared_query_key_and_reference():
    m = build_attention("oc", 16).eval()
    att = m.attention
    # One transform for query and key (official f_query = f_key): no separate query module.
    assert att.key_channels == 8 and att.f_value.out_channels == 8 and att.W.out_channels == 16
    assert not any("query" in n for n, _ in m.named_parameters())
    x = torch.randn(2, 16, 4, 5)
    # W starts at zero: the object context is zero at initialisation.
    assert att(x).abs().max() == 0
    _randomise_W(m)
    k = att.f_key(x).flatten(2)
    v = att.f_value(x).flatten(2)
    sim = torch.softmax(k.transpose(1, 2) @ k / 8**0.5, dim=-1)  # (N, HW, HW), rows over positions
    torch.testing.assert_close(sim.sum(-1), torch.ones(2, 20))
    ctx = att.W((v @ sim.transpose(1, 2)).view(2, 8, 4, 5))
    torch.testing.assert_close(att(x), ctx)
    torch.testing.assert_close(m(x), m.fuse(torch.cat([ctx, x], 1)))
    assert m.fuse[0].in_channels == 32 and isinstance(m.fuse[-1], nn.Dropout2d) and m.fuse[-1].p == 0.05


def test_oc_context_is_global():
    m = build_attention("oc", 16).eval()
    _randomise_W(m)
    x = torch.randn(1, 16, 6, 6)
    x2 = x.clone()
    x2[0, :, 5, 5] += 3.0
    diff = (m.attention(x2) - m.attention(x)).abs().sum(1)[0]
    assert (diff > 1e-6).all()  # every pixel's context sees the far corner


def test_region_bounds_follow_official_split():
    assert _region_bounds(12, 3) == [(0, 4), (4, 8), (8, 12)]
    assert _region_bounds(7, 3) == [(0, 2), (2, 4), (4, 7)]  # remainder goes to the last region
    assert _region_bounds(2, 6) == [(0, 1), (1, 2)]  # finer grid than the map: one row each
    assert _region_bounds(1, 6) == [(0, 1)]


def test_oc_pyramid_regions_attend_inside_themselves():
    m = build_attention("oc_pyramid", 8).eval()
    assert m.sizes == (1, 2, 3, 6)
    assert m.up_dr[0].out_channels == 8 * 4 and m.fuse[0].in_channels == 2 * 8 * 4
    _randomise_W(m)
    stage2 = m.stages[1]
    assert stage2.grid == 2 and stage2.key_channels == 4 and stage2.f_value.out_channels == 8
    x = torch.randn(1, 8, 7, 5)  # not divisible by the grid: rows [0,3),[3,7), cols [0,2),[2,5)
    x2 = x.clone()
    x2[0, :, 1, 1] += 3.0  # inside the top-left region
    diff = (stage2(x2) - stage2(x)).abs().sum(1)[0]
    assert (diff[:3, :2] > 1e-6).all()
    assert diff[3:, :].max() == 0 and diff[:, 2:].max() == 0
    # The 1x1 level is global.
    diff1 = (m.stages[0](x2) - m.stages[0](x)).abs().sum(1)[0]
    assert (diff1 > 1e-6).all()


def test_oc_pyramid_region_matches_reference():
    blk = SelfAttentionBlock(6, 3, 6, 6, grid=3).eval()
    _randomise_W(blk)
    x = torch.randn(1, 6, 7, 8)
    k, v = blk.f_key(x), blk.f_value(x)
    out = blk(x)
    r0, r1, c0, c1 = 4, 7, 2, 4  # a middle-right region of the 7x8 map with grid 3
    kk, vv = k[:, :, r0:r1, c0:c1].flatten(2), v[:, :, r0:r1, c0:c1].flatten(2)
    sim = torch.softmax(kk.transpose(1, 2) @ kk / 3**0.5, dim=-1)
    ref = blk.W((vv @ sim.transpose(1, 2)).view(1, 6, r1 - r0, c1 - c0))
    torch.testing.assert_close(out[:, :, r0:r1, c0:c1], ref)


def test_oc_pyramid_tiny_map_attends_to_itself():
    # 2x2 map with a 6x6 grid: each pixel is its own region, its context is W(value) there.
    blk = SelfAttentionBlock(4, 2, 4, 4, grid=6).eval()
    _randomise_W(blk)
    x = torch.randn(2, 4, 2, 2)
    torch.testing.assert_close(blk(x), blk.W(blk.f_value(x)))
    m = build_attention("oc_pyramid", 8, sizes=[1, 6]).eval()
    assert m(torch.randn(1, 8, 1, 3)).shape == (1, 8, 1, 3)


def test_oc_asp_branches():
    m = build_attention("oc_asp", 16, dilations=[2, 3]).eval()
    dil = [b[0].dilation for b in m.branches]
    assert dil == [(1, 1), (2, 2), (3, 3)] and m.branches[0][0].kernel_size == (1, 1)
    assert all(b[0].out_channels == 8 for b in m.branches)  # official: half the input width
    assert m.fuse[0].in_channels == 8 * 4 and m.fuse[0].out_channels == 16
    ctx = m.context[3]
    assert isinstance(ctx, SelfAttentionBlock) and ctx.scale == 2 and ctx.key_channels == 4
    default = build_attention("oc_asp", 16)
    assert default.dilations == (12, 24, 36) and len(default.branches) == 4
    for hw in ((1, 1), (5, 7), (9, 8)):
        assert m(torch.randn(1, 16, *hw)).shape == (1, 16, *hw)


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("oc_pyramid", dict(sizes=[1, 0]), "sizes"),
        ("oc_pyramid", dict(sizes=[]), "sizes"),
        ("oc_asp", dict(dilations=[12, 2.5]), "dilations"),
        ("oc_asp", dict(context_scale=0), "context_scale"),
        ("oc", dict(context_dropout=1.5), "context_dropout"),
        ("cc", dict(recurrence=0), "recurrence"),
        ("da", dict(reduction=0), "reduction"),
        ("ema", dict(num_bases=0), "num_bases"),
        ("ema", dict(stages=0), "stages"),
        ("ema", dict(momentum=1.5), "momentum"),
    ],
)
def test_bad_hyper_parameters(name, kw, match):
    with pytest.raises(ValueError, match=match):
        build_attention(name, 16, **kw)


# --------------------------------------------------------------------------- CCNet


def _cc_reference(m, x):
    """Dense HW x HW criss-cross attention: mask to the row and column (self once), one softmax."""
    n, c, h, w = x.shape
    q = m.query_conv(x).flatten(2)
    k = m.key_conv(x).flatten(2)
    v = m.value_conv(x).flatten(2)
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ii, jj = ii.flatten(), jj.flatten()
    allowed = (ii[:, None] == ii[None, :]) | (jj[:, None] == jj[None, :])  # self allowed once
    energy = torch.einsum("nci,ncj->nij", q, k).masked_fill(~allowed, float("-inf"))
    att = energy.softmax(-1)
    return m.gamma * torch.einsum("ncj,nij->nci", v, att).view_as(x) + x


@pytest.mark.parametrize("hw", [(5, 7), (1, 1), (1, 4), (6, 1)])
def test_cc_matches_dense_reference(hw):
    m = build_attention("cc", 16, recurrence=2).double()
    assert m.query_conv.out_channels == m.key_conv.out_channels == 2 and m.value_conv.out_channels == 16
    _set_gamma(m, 0.8)
    x = torch.randn(2, 16, *hw, dtype=torch.float64)
    torch.testing.assert_close(m.step(x), _cc_reference(m, x))
    torch.testing.assert_close(m(x), _cc_reference(m, _cc_reference(m, x)))  # shared weights
    col, row = m.attention(x)
    torch.testing.assert_close(col.sum(-1) + row.sum(-1), torch.ones(2, *hw, dtype=torch.float64))
    assert (torch.diagonal(col, dim1=1, dim2=3) == 0).all()  # self counted in the row term only


def test_cc_identity_when_gamma_zero():
    m = build_attention("cc", 16)
    x = torch.randn(1, 16, 5, 6)
    torch.testing.assert_close(m(x), x)


@pytest.mark.parametrize("recurrence, reaches", [(1, False), (2, True)])
def test_cc_receptive_field(recurrence, reaches):
    m = build_attention("cc", 16, recurrence=recurrence)
    _set_gamma(m, 1.0)
    x = torch.randn(1, 16, 6, 7)
    x2 = x.clone()
    x2[0, :, 4, 5] += 2.0  # neither in row 1 nor in column 2
    d = (m(x2) - m(x))[0, :, 1, 2].abs().max()
    assert (d > 1e-6) == reaches
    # Pixels on the criss-cross of (4, 5) are always reached.
    assert (m(x2) - m(x))[0, :, 4, 0].abs().max() > 1e-6


def test_cc_never_materialises_hw_by_hw():
    m = build_attention("cc", 8)
    col, row = m.attention(torch.randn(1, 8, 9, 11))
    assert col.shape == (1, 9, 11, 9) and row.shape == (1, 9, 11, 11)


# --------------------------------------------------------------------------- EMANet


def _norms(b):
    return b.norm(dim=1)


def test_ema_bases_init_and_shapes():
    m = build_attention("ema", 16, num_bases=8)
    assert m.bases.shape == (1, 16, 8) and not m.bases.requires_grad
    assert "bases" in dict(m.named_buffers()) and "bases" not in dict(m.named_parameters())
    torch.testing.assert_close(_norms(m.bases), torch.ones(1, 8), atol=1e-5, rtol=0)
    assert (m.stages, m.momentum) == (3, 0.9)
    assert build_attention("ema", 16).num_bases == 64


def test_ema_responsibilities_and_m_step():
    m = build_attention("ema", 16, num_bases=4, stages=1)
    feats = torch.randn(2, 16, 30)
    mu, z = m.em(feats)
    torch.testing.assert_close(z.sum(-1), torch.ones(2, 30))  # softmax over the K bases
    # One step by hand: E with the stored bases, M = weighted mean of the pixels, L2-normalised.
    z_ref = torch.softmax(feats.transpose(1, 2) @ m.bases, dim=2)
    mu_ref = feats @ (z_ref / (1e-6 + z_ref.sum(1, keepdim=True)))
    mu_ref = mu_ref / (1e-6 + mu_ref.norm(dim=1, keepdim=True))
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(mu, mu_ref)
    torch.testing.assert_close(_norms(mu), torch.ones(2, 4), atol=1e-5, rtol=0)


def test_ema_reconstruction_is_low_rank():
    m = build_attention("ema", 16, num_bases=3).eval()
    x = torch.randn(2, 16, 6, 6)
    feats = m.conv1(x).flatten(2)
    mu, z = m.em(feats)
    recon = torch.relu(mu @ z.transpose(1, 2)).view_as(x)
    torch.testing.assert_close(m(x), torch.relu(x + m.conv2(recon)))
    assert torch.linalg.matrix_rank(mu @ z.transpose(1, 2)).max() <= 3


def test_ema_bases_update_train_only_and_momentum():
    m = build_attention("ema", 16, num_bases=8, momentum=0.9)
    x = torch.randn(2, 16, 5, 5)
    m.eval()
    before = m.bases.clone()
    m(x)
    assert torch.equal(m.bases, before)  # eval: no update

    m.train()
    mu, _ = m.em(m.conv1(x).flatten(2))
    batch = mu.mean(0, keepdim=True)
    batch = batch / batch.norm(dim=1, keepdim=True)
    # mmseg's EMAModule: normalise the batch mean, blend; the blend itself is NOT renormalised.
    expected = 0.9 * before + 0.1 * batch
    m(x)
    assert not torch.allclose(m.bases, before)
    torch.testing.assert_close(m.bases, expected)
    assert (_norms(m.bases) < 1 - 1e-4).any()  # a blend of two unit vectors is shorter
    # momentum 1 keeps the bases, momentum 0 replaces them by the normalised batch mean.
    m1 = build_attention("ema", 16, num_bases=8, momentum=1.0).train()
    b1 = m1.bases.clone()
    m1(x)
    torch.testing.assert_close(m1.bases, b1)
    m0 = build_attention("ema", 16, num_bases=8, momentum=0.0).train()
    m0.load_state_dict(m.state_dict())
    mu0, _ = m0.em(m0.conv1(x).flatten(2))
    m0(x)
    mean0 = mu0.mean(0, keepdim=True)
    torch.testing.assert_close(m0.bases, mean0 / mean0.norm(dim=1, keepdim=True))


def test_ema_no_gradient_through_em():
    m = build_attention("ema", 16, num_bases=4).train()
    x = torch.randn(2, 16, 4, 4, requires_grad=True)
    m(x).sum().backward()
    assert m.conv1.weight.grad is None and not m.conv1.weight.requires_grad  # only feeds the EM
    assert m.conv2[0].weight.grad is not None and x.grad is not None
    assert m.bases.grad is None


def test_ema_all_reduces_bases_across_processes(monkeypatch):
    """Under torch.distributed the update uses the mean of every process's batch-mean bases."""
    m = build_attention("ema", 16, num_bases=4, momentum=0.5).train()
    other = torch.randn(1, 16, 4)  # what a second process contributes (already divided by 2)
    calls = []

    def fake_all_reduce(t, op=None):
        calls.append(op)
        t.add_(other / 2)

    monkeypatch.setattr(ema_mod.dist, "is_available", lambda: True)
    monkeypatch.setattr(ema_mod.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(ema_mod.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(ema_mod.dist, "all_reduce", fake_all_reduce)
    x = torch.randn(2, 16, 4, 4)
    before = m.bases.clone()
    mu, _ = m.em(m.conv1(x).flatten(2))
    mean = (mu.mean(0, keepdim=True) + other) / 2
    mean = mean / mean.norm(dim=1, keepdim=True)
    expected = 0.5 * before + 0.5 * mean
    m(x)
    assert calls == [torch.distributed.ReduceOp.SUM]
    torch.testing.assert_close(m.bases, expected)


# --------------------------------------------------------------------------------------------------
# DNL, ISA, coordinate attention, APCNet, axial attention, ANN, OCR
# --------------------------------------------------------------------------------------------------

def test_dnl_whitening_and_unary_term():
    torch.manual_seed(0)
    m = build_attention("dnl", 16, impl="explicit").double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
        query, key, scale = m.embeddings(x)
        # whitened: zero mean over the positions; logits / (sqrt(C') * temperature)
        assert query.mean(1).abs().max() < 1e-12 and key.mean(1).abs().max() < 1e-12
        assert scale == pytest.approx(8 ** -0.5 / 0.05)
        # adding a constant to every position's embedding changes nothing in the pairwise term
        rows = m.pairwise(x)
        m.theta.bias += 3.0
        m.phi.bias -= 2.0
        torch.testing.assert_close(m.pairwise(x), rows)
        with record_attention(m):
            m(x)
        maps = attention_maps(m, 2, 3)
    assert list(maps) == ["pairwise", "unary"]
    torch.testing.assert_close(maps["pairwise"].double(), rows[0, 2 * 7 + 3].view(5, 7))
    torch.testing.assert_close(maps["unary"].sum(), torch.tensor(1.0, dtype=maps["unary"].dtype))
    with pytest.raises(ValueError, match="temperature"):
        build_attention("dnl", 16, temperature=0)
    with pytest.raises(ValueError, match="mode"):
        build_attention("dnl", 16, mode="gaussian")


def test_isa_maps_are_the_two_sparse_rows():
    torch.manual_seed(0)
    m = build_attention("isa", 16, key_channels=8, down_factor=(4, 3)).double().eval()
    x = torch.randn(1, 16, 8, 9, dtype=torch.float64)  # 2 x 3 blocks of 4 x 3, no padding
    with torch.no_grad(), record_attention(m):
        m(x)
    maps = attention_maps(m, 5, 4)  # block (1, 1), offset (1, 1) in it
    long, short = maps["long_range"], maps["short_range"]
    assert list(maps) == ["long_range", "short_range"]
    rows, cols = torch.nonzero(long, as_tuple=True)
    assert set(rows.tolist()) == {1, 5} and set(cols.tolist()) == {1, 4, 7}  # same offset in every block
    rows, cols = torch.nonzero(short, as_tuple=True)
    assert set(rows.tolist()) == {4, 5, 6, 7} and set(cols.tolist()) == {3, 4, 5}  # its own block
    torch.testing.assert_close(long.sum(), torch.tensor(1.0, dtype=long.dtype))
    torch.testing.assert_close(short.sum(), torch.tensor(1.0, dtype=short.dtype))
    # With padding (8x9 by 3x4 -> 9x12), what fell on the padding is cut off.
    m = build_attention("isa", 16, key_channels=8, down_factor=(3, 4)).double().eval()
    with torch.no_grad(), record_attention(m):
        m(x)
    maps = attention_maps(m, 0, 0)
    assert maps["long_range"].shape == (8, 9) and 0 < maps["short_range"].sum() < 1
    with pytest.raises(ValueError, match="down_factor"):
        build_attention("isa", 16, down_factor=(0, 8))


def test_coordatt_gates_are_directional_and_recorded():
    torch.manual_seed(0)
    m = build_attention("coordatt", 16).eval()
    x = torch.randn(1, 16, 6, 9)
    with torch.no_grad(), record_attention(m):
        y = m(x)
        a_h, a_w = m.gates(x)
    assert a_h.shape == (1, 16, 6, 1) and a_w.shape == (1, 16, 1, 9)
    torch.testing.assert_close(y, x * a_h * a_w)
    maps = attention_maps(m, 0, 0)
    assert list(maps) == ["gate", "rows", "columns"] and all(v.shape == (6, 9) for v in maps.values())
    torch.testing.assert_close(maps["gate"], (a_h * a_w)[0].mean(0))
    # a feature moved along a row changes the width gate, not the height gate of the rows
    with torch.no_grad():
        b_h, b_w = m.gates(x.roll(3, dims=3))
    torch.testing.assert_close(b_h, a_h)
    torch.testing.assert_close(b_w, a_w.roll(3, dims=3))


def test_apc_records_the_region_affinities():
    torch.manual_seed(0)
    m = build_attention("apc", 16, pool_scales=[1, 3]).eval()
    x = torch.randn(1, 16, 6, 9)
    with torch.no_grad(), record_attention(m):
        assert m(x).shape == x.shape
    maps = attention_maps(m, 4, 2)
    assert list(maps) == ["scale_1", "scale_3"] and all(v.shape == (6, 9) for v in maps.values())
    assert maps["scale_1"].unique().numel() == 1  # one region: one weight everywhere
    a = m.recorded["scale_3"][0, 4 * 9 + 2].view(3, 3)
    assert maps["scale_3"][0, 0] == a[0, 0] and maps["scale_3"][5, 8] == a[2, 2] and maps["scale_3"][2, 3] == a[1, 1]
    assert ((maps["scale_3"] > 0) & (maps["scale_3"] < 1)).all()  # sigmoids
    with pytest.raises(ValueError, match="pool_scales"):
        build_attention("apc", 16, pool_scales=[])


def test_axial_maps_compose_the_column_and_row_steps():
    torch.manual_seed(0)
    m = build_attention("axial", 16, groups=2).eval()
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad(), record_attention(m):
        m(x)
    maps = attention_maps(m, 3, 4, 1)
    assert list(maps) == ["composed", "height", "width"] and all(v.shape == (7, 9) for v in maps.values())
    for part in maps.values():
        torch.testing.assert_close(part.sum(), torch.tensor(1.0))
    assert (maps["height"][:, [0, 1, 2, 3, 5, 6, 7, 8]] == 0).all() and (maps["width"][[0, 1, 2, 4, 5, 6]] == 0).all()
    torch.testing.assert_close(maps["composed"].sum(0), maps["width"][3])


def test_ann_block_maps_are_a_distribution_over_the_pooled_regions():
    torch.manual_seed(0)
    m = build_attention("ann", 16).eval()
    assert m.project_channels == 8
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad(), record_attention(m):
        m(x)
    assert m.recorded["attention"].shape == (2, 63, 1 + 9 + 36 + 64)
    maps = attention_maps(m, 3, 4, 1)
    assert list(maps) == ["scale_1", "scale_3", "scale_6", "scale_8"] and all(v.shape == (7, 9) for v in maps.values())
    torch.testing.assert_close(m.recorded["attention"][1, 3 * 9 + 4].sum(), torch.tensor(1.0))
    # the output projection starts at zero (mmseg's init_weights): the block is then its bottleneck on cat(0, x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.bottleneck(torch.cat([torch.zeros_like(x), x], 1)))
    with pytest.raises(ValueError, match="key_pool_scales"):
        build_attention("ann", 16, key_pool_scales=[])


def test_ocr_block_maps_are_the_pixel_region_relation():
    torch.manual_seed(0)
    m = build_attention("ocr", 16, num_regions=4).eval()
    assert m.ocr_channels == 8
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad(), record_attention(m):
        m(x)
    assert m.recorded["attention"].shape == (2, 63, 4) and m.recorded["regions"].shape == (2, 4, 63)
    torch.testing.assert_close(m.recorded["attention"].sum(-1), torch.ones(2, 63))
    torch.testing.assert_close(m.recorded["regions"].sum(-1), torch.ones(2, 4))
    maps = attention_maps(m, 3, 4, 1)
    assert list(maps)[0] == "gathered" and len(maps) == 5 and all(v.shape == (7, 9) for v in maps.values())
    torch.testing.assert_close(maps["gathered"].sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="ocr_channels"):
        build_attention("ocr", 16, ocr_channels=0)
    with pytest.raises(ValueError, match="region logits"):
        build_attention("ocr", 16, num_regions=None)(x)
