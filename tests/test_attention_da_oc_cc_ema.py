"""Mechanism tests for DANet (da), OCNet (oc, oc_pyramid, oc_asp), CCNet (cc) and EMANet (ema)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from segattn.models.attention import build_attention
from segattn.models.heads import HEADS
from segattn.models.heads.da import DAHead
from segattn.models.attention import ema as ema_mod
from segattn.models.attention.oc import SelfAttentionBlock, _region_bounds


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _set_gamma(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.fill_(value)


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


def test_da_head_outputs_and_fusion():
    head = HEADS["da"]([8, 16, 24, 32], num_classes=5, channels=16, dropout=0.1).eval()
    assert HEADS["da"] is DAHead
    assert head.loss_weights == {"out": 1.0, "pam": 1.0, "cam": 1.0}
    feats = [torch.randn(2, c, 6, 6) for c in (8, 16, 24, 32)]
    _set_gamma(head, 0.5)
    out = head(feats)
    assert set(out) == {"out", "pam", "cam"}
    assert all(v.shape == (2, 5, 6, 6) for v in out.values())
    # "out" classifies the SUM of the two branch features (DANet's fusion), each branch its own.
    pam_feat = head.pam_out(head.attention.pam(head.pam_in(feats[-1])))
    cam_feat = head.cam_out(head.attention.cam(head.cam_in(feats[-1])))
    torch.testing.assert_close(out["out"], head.cls(pam_feat + cam_feat))
    torch.testing.assert_close(out["pam"], head.pam_cls(pam_feat))
    torch.testing.assert_close(out["cam"], head.cam_cls(cam_feat))
    # All three losses reach the parameters of both branches.
    head.train()
    loss = sum(v.square().mean() for v in head(feats).values())
    loss.backward()
    for mod in (head.pam_in[0], head.cam_in[0], head.cls, head.pam_cls, head.cam_cls):
        assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="concat_input"):
        HEADS["da"]([8, 16, 24, 32], num_classes=5, channels=16, concat_input=True)


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
