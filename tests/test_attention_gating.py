"""Gating mechanisms (SE, CBAM, SK, ECA, SGE, SA) checked against their papers' definitions.

Shapes, taxonomy, gradient flow and odd sizes are covered by the registry-wide tests; these
check what each mechanism computes.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segattn.models.attention import build_attention
from segattn.models.attention.eca import eca_kernel_size
from segattn.models.heads.sa import SAHead


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _ratio_constant_over(ratio: torch.Tensor, dims) -> bool:
    return torch.allclose(ratio, ratio.mean(dim=dims, keepdim=True).expand_as(ratio), atol=1e-5)


# --------------------------------------------------------------------------------------- SE
@pytest.mark.parametrize("channels,hidden", [(48, 3), (64, 4), (16, 1), (8, 1), (1, 1)])
def test_se_hidden_width_is_exactly_c_over_r(channels, hidden):
    m = build_attention("se", channels)
    assert m.fc[0].out_features == hidden and m.fc[2].in_features == hidden
    assert m.fc[0].bias is not None and m.fc[2].bias is not None  # the paper's FCs have biases


def test_se_gate_is_per_channel_in_unit_interval_and_matches_paper():
    m = build_attention("se", 48).eval()
    x = torch.randn(2, 48, 6, 5) + 0.5
    out = m(x)
    ratio = out / x
    assert _ratio_constant_over(ratio, (2, 3))  # one scale per channel, the same at every position
    assert (ratio > 0).all() and (ratio < 1).all()
    fc1, fc2 = m.fc[0], m.fc[2]
    s = torch.sigmoid(fc2(torch.relu(fc1(x.mean(dim=(2, 3))))))  # Eq. 2-3
    assert torch.allclose(ratio[:, :, 0, 0], s, atol=1e-5)
    # The squeeze is a global average: moving pixels around does not change the gate.
    perm = torch.randperm(30)
    xp = x.flatten(2)[..., perm].view_as(x)
    assert torch.allclose(m(xp).flatten(2), out.flatten(2)[..., perm], atol=1e-6)


# --------------------------------------------------------------------------------------- ECA
@pytest.mark.parametrize("channels,k", [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7), (1, 1)])
def test_eca_adaptive_kernel_size(channels, k):
    assert eca_kernel_size(channels) == k
    m = build_attention("eca", channels)
    assert m.k_size == k and m.conv.weight.shape == (1, 1, k)
    assert m.conv.bias is None


@pytest.mark.parametrize("bad", [2, 4, 0, -3])
def test_eca_rejects_even_or_nonpositive_kernel(bad):
    with pytest.raises(ValueError, match="k_size"):
        build_attention("eca", 64, k_size=bad)


def test_eca_scales_channels_and_commutes_with_spatial_permutation():
    m = build_attention("eca", 64).eval()
    x = torch.randn(2, 64, 6, 7) + 0.3
    out = m(x)
    assert _ratio_constant_over(out / x, (2, 3))
    perm = torch.randperm(42)
    xp = x.flatten(2)[..., perm].view_as(x)
    assert torch.allclose(m(xp).flatten(2), out.flatten(2)[..., perm], atol=1e-6)


def test_eca_is_local_across_channels_with_zero_padding():
    """Channel c's weight depends on channels c-k//2..c+k//2 only (no reduction, no FC)."""
    m = build_attention("eca", 16, k_size=3).eval()
    with torch.no_grad():
        m.conv.weight.copy_(torch.tensor([[[0.5, -1.0, 2.0]]]))
    x = torch.randn(1, 16, 4, 4)
    g = m.gate(x).flatten()
    y = x.mean(dim=(2, 3)).flatten()
    ypad = F.pad(y, (1, 1))
    ref = torch.sigmoid(0.5 * ypad[:-2] - 1.0 * ypad[1:-1] + 2.0 * ypad[2:])
    assert torch.allclose(g, ref, atol=1e-6)
    x2 = x.clone()
    x2[:, 10] += 3.0
    changed = (m.gate(x2).flatten() - g).abs() > 1e-7
    assert changed.nonzero().flatten().tolist() == [9, 10, 11]


# --------------------------------------------------------------------------------------- SK
def test_sk_structure_follows_paper():
    m = build_attention("sk", 64)
    assert m.groups == 32 and m.dim == 32  # d = max(64 // 16, L=32)
    assert [c[0].dilation for c in m.convs] == [(1, 1), (2, 2)]
    assert all(c[0].kernel_size == (3, 3) and c[0].groups == 32 for c in m.convs)
    wide = build_attention("sk", 1024)
    assert wide.dim == 64  # C // r wins over L
    assert build_attention("sk", 48).groups == 1  # 32 does not divide 48
    with pytest.raises(ValueError, match="groups"):
        build_attention("sk", 64, groups=5)


def test_sk_branch_weights_sum_to_one_and_select_the_branches():
    m = build_attention("sk", 32).train()
    x = torch.randn(2, 32, 8, 8)
    feats = torch.stack([conv(x) for conv in m.convs], dim=1)
    a = m.branch_weights(feats)
    assert a.shape == (2, 2, 32, 1, 1)
    assert torch.allclose(a.sum(dim=1), torch.ones(2, 32, 1, 1), atol=1e-6)
    assert (a > 0).all()
    assert not torch.allclose(a[:, 0], a[:, 1])  # the weights really depend on the input
    m.eval()
    x = torch.randn(2, 32, 8, 8)
    feats = torch.stack([conv(x) for conv in m.convs], dim=1)
    expected = (m.branch_weights(feats) * feats).sum(dim=1)
    assert torch.allclose(m(x), expected, atol=1e-6)
    # The select fc has no bias (authors' code, timm). Forcing the softmax onto the dilated branch
    # (a stand-in fc whose bias does it) makes the output that branch alone.
    assert m.select.bias is None
    with torch.no_grad():
        m.select = nn.Conv2d(m.dim, 2 * 32, 1)
        m.select.weight.zero_()
        m.select.bias.copy_(torch.cat([torch.full((32,), -50.0), torch.full((32,), 50.0)]))
    assert torch.allclose(m(x), m.convs[1](x), atol=1e-6)


# --------------------------------------------------------------------------------------- SGE
def test_sge_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"groups=64.*channels=48"):
        build_attention("sge", 48)
    with pytest.raises(ValueError, match="groups"):
        build_attention("sge", 48, groups=5)


def test_sge_at_init_is_uniform_sigmoid_one():
    m = build_attention("sge", 64, groups=8)
    assert torch.all(m.weight == 0) and torch.all(m.bias == 1)
    x = torch.randn(2, 64, 5, 7)
    assert torch.allclose(m(x), x * torch.sigmoid(torch.tensor(1.0)), atol=1e-6)


def test_sge_matches_naive_reference():
    groups = 4
    m = build_attention("sge", 32, groups=groups)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.5, -1.0, 2.0, 1.5]).view(1, groups, 1, 1))
        m.bias.copy_(torch.tensor([0.0, 0.3, -0.2, 1.0]).view(1, groups, 1, 1))
    x = torch.randn(2, 32, 6, 5)
    ref = torch.empty_like(x)
    for n in range(2):
        for g in range(groups):
            xg = x[n, g * 8 : (g + 1) * 8]  # (8, H, W)
            desc = xg.mean(dim=(1, 2))  # GAP of the group
            c = (xg * desc[:, None, None]).sum(dim=0)  # similarity per position
            c = (c - c.mean()) / (c.std() + 1e-5)
            a = c * m.weight[0, g, 0, 0] + m.bias[0, g, 0, 0]
            ref[n, g * 8 : (g + 1) * 8] = xg * torch.sigmoid(a)
    assert torch.allclose(m(x), ref, atol=1e-5)
    # The gate is a spatial map shared by the channels of a group.
    ratio = (m(x) / x).view(2, groups, 8, 6, 5)
    assert _ratio_constant_over(ratio, 2)


# --------------------------------------------------------------------------------------- CBAM
def test_cbam_spatial_gate_is_identical_across_channels():
    m = build_attention("cbam", 32).eval()
    y = torch.randn(2, 32, 7, 6)
    ratio = m.spatial_gate(y) / y
    assert _ratio_constant_over(ratio, 1)
    assert not _ratio_constant_over(ratio, (2, 3))  # but it does vary over positions
    assert isinstance(m.spatial_gate.bn, nn.BatchNorm2d) and m.spatial_gate.conv.kernel_size == (7, 7)


def test_cbam_channel_gate_shares_one_mlp_over_avg_and_max():
    m = build_attention("cbam", 32).eval()
    x = torch.randn(2, 32, 7, 6)
    mid = m.channel_gate(x)
    ratio = mid / x
    assert _ratio_constant_over(ratio, (2, 3))
    mlp = m.channel_gate.mlp
    assert mlp[0].out_features == 2  # 32 // 16
    ref = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    assert torch.allclose(ratio[:, :, 0, 0], ref, atol=1e-5)
    # Channel gate first, then spatial gate (the paper's sequential order).
    assert torch.allclose(m(x), m.spatial_gate(mid), atol=1e-6)


# --------------------------------------------------------------------------------------- SA
class _Const(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x, self.value)


def test_sa_output_formula_with_hand_set_branches():
    m = build_attention("sa", 8).eval()
    x = torch.randn(2, 8, 5, 7)
    # Attention logits 0 -> X_attn = 0.5 everywhere; X_res = X: out = 0.5 * X + 0.5.
    m.res, m.attn = nn.Identity(), _Const(0.0)
    assert torch.allclose(m(x), 0.5 * x + 0.5, atol=1e-6)
    # Attention channel = identity on the pooled input: for a per-channel-constant input pooling
    # and upsampling change nothing, so X_attn = sigmoid(X) and out = sigmoid(X) * X + sigmoid(X).
    m.attn = nn.Identity()
    xc = torch.randn(2, 8, 1, 1).expand(2, 8, 6, 6).contiguous()
    assert torch.allclose(m(xc), torch.sigmoid(xc) * xc + torch.sigmoid(xc), atol=1e-6)
    # X_res = 0 leaves the attention channel itself: out = X_attn, a down-sampled (2x2) map.
    m.res = _Const(0.0)
    xs = torch.zeros(1, 8, 4, 4)
    xs[..., :2, :2] = 4.0  # one pooled cell
    a = m(xs)
    assert (a > 0).all() and (a < 1).all()
    assert a[..., 0, 0].min() > 0.9 and a[..., 3, 3].max() <= 0.5 + 1e-6


def test_sa_rejects_bad_pool_size():
    with pytest.raises(ValueError, match="pool_size"):
        build_attention("sa", 8, pool_size=0)


def _feats(n=2):
    return [torch.randn(n, 8, 16, 16), torch.randn(n, 16, 8, 8), torch.randn(n, 24, 8, 8), torch.randn(n, 32, 8, 8)]


def test_sa_head_multistage_outputs_and_loss_weights():
    head = SAHead([8, 16, 24, 32], num_classes=5, channels=16, class_presence_loss=True).eval()
    out = head(_feats())
    assert set(out) == {"out", "dense", "mask_c2", "mask_c3", "mask_c4", "mask_c5", "presence"}
    assert set(head.loss_weights) == set(out)
    assert head.loss_weights["out"] == 1.0 and head.loss_weights["presence"] == 0.2
    aux = [w for k, w in head.loss_weights.items() if k not in ("out", "presence")]
    assert math.isclose(sum(aux), 0.8) and len(set(aux)) == 1
    assert head.presence_keys == {"presence"} and out["presence"].shape == (2, 5)
    assert out["out"].shape == (2, 5, 8, 8) and out["mask_c2"].shape == (2, 5, 16, 16)
    # The masks only guide the prediction through the merge: zero it and "out" is the FCN's.
    with torch.no_grad():
        head.merge.weight.zero_()
        head.merge.bias.zero_()
    out = head(_feats())
    assert torch.allclose(out["out"], out["dense"])


def test_sa_head_stage_losses_reach_their_sa_modules():
    head = SAHead([8, 16, 24, 32], num_classes=3, channels=8, stages=["c3", "c5"]).train()
    assert head.presence_keys == set() and set(head.loss_weights) == {"out", "dense", "mask_c3", "mask_c5"}
    out = head(_feats())
    out["mask_c3"].sum().backward()
    assert head.sa["c3"][1].attn[0][0].weight.grad.abs().sum() > 0
    assert head.sa["c5"][1].res[0].weight.grad is None
    with pytest.raises(ValueError, match="stages"):
        SAHead([8, 16, 24, 32], num_classes=3, stages=["c6"])


def test_sk_training_on_one_image_per_process_says_what_to_set():
    m = build_attention("sk", 32).train()
    with pytest.raises(ValueError, match=r"sk: .*BatchNorm.*at least 2 images.*trainer.batch_size"):
        m(torch.randn(1, 32, 5, 5))
    m.eval()
    assert m(torch.randn(1, 32, 5, 5)).shape == (1, 32, 5, 5)  # inference on one image is fine
