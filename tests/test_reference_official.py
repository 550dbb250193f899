"""Our attention modules compute the same function as the authors' official code.

The official forwards are re-implemented in tests/reference_official.py from the sources listed
there. Each test builds ours, overwrites EVERY parameter and buffer with random values (several
modules zero-initialise a gate, a gamma or an output conv, which would hide a wrong branch),
copies them into the reference through an explicit name map (a bijection, checked), and compares
the two in float64, eval mode, on a non-square 2 x C x 7 x 11 input.

Tolerance: ``rtol = atol = 1e-10``. Both sides run the same float64 arithmetic up to the order of
summation (einsum vs bmm, fused vs separate softmax), which differs by ~1e-15; a real difference
(a missing bias, a wrong epsilon, a transposed map, a different region split, a missing activation)
is orders of magnitude larger with O(1) random weights.
EMA is the one exception, compared with the official epsilon at a looser, derived tolerance (see
``test_ema_matches_official_emau``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import reference_official as R
from segattn.models.attention import build_attention
from segattn.models.heads.oc import OCHead

TOL = dict(rtol=1e-10, atol=1e-10)
SHAPE_HW = (7, 11)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Every floating parameter and buffer gets a random value of a sensible scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            elif leaf == "running_mean":
                t.copy_(0.2 * torch.randn(t.shape, generator=g, dtype=t.dtype))
            elif t.dim() >= 2 and t.shape[0] > 0 and t[0].numel() > 1:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) / math.sqrt(fan_in))
            else:  # biases, BN/LN affine, gammas, SGE's per-group scalars: O(1), never zero
                sign = torch.where(torch.rand(t.shape, generator=g) < 0.5, -1.0, 1.0).to(t.dtype)
                t.copy_(sign * (0.3 + 0.7 * torch.rand(t.shape, generator=g, dtype=t.dtype)))


def _copy(ours: nn.Module, ref: nn.Module, prefixes: dict[str, str]) -> None:
    """Load ours' state into ``ref``: each of ours' keys is renamed by its longest matching prefix
    in ``prefixes`` (ours -> ref). The map must be a bijection onto ref's state_dict, with equal
    numbers of elements (a Linear copied to a 1x1 conv is reshaped). A reference tensor reachable
    under two names (OCNet's ``f_query = f_key``) is filled once, through either name."""
    src = ours.state_dict()
    dst = ref.state_dict(keep_vars=True)
    mapped = {}
    for key, value in src.items():
        match = max((p for p in prefixes if key == p or key.startswith(p + ".")), key=len, default=None)
        assert match is not None, f"no mapping for our {key}"
        target = prefixes[match] + key[len(match):]
        assert target in dst, f"our {key} -> {target}, which the reference does not have"
        assert target not in mapped, f"two of our keys map to {target}"
        assert dst[target].numel() == value.numel(), f"{key} -> {target}: {value.shape} vs {dst[target].shape}"
        mapped[target] = value.reshape(dst[target].shape).clone()
    for key in set(dst) - set(mapped):  # aliases of a mapped tensor
        twin = next((k for k in mapped if dst[k] is dst[key]), None)
        if twin is not None:
            mapped[key] = mapped[twin]
    missing = set(dst) - set(mapped)
    assert not missing, f"reference keys left without a value: {sorted(missing)}"
    ref.load_state_dict(mapped, strict=True)


def _pair(ours: nn.Module, ref: nn.Module, prefixes: dict[str, str], seed: int = 0):
    ours = ours.double()
    _randomise(ours, seed)
    ref = ref.double()
    _copy(ours, ref, prefixes)
    return ours.eval(), ref.eval()


def _x(c: int, seed: int = 1, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, *SHAPE_HW, generator=g, dtype=torch.float64)


def _check(ours, ref, x, nontrivial: bool = True):
    with torch.no_grad():
        a = ours(x)
        b = ref(x)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, **TOL)
    if nontrivial and a.shape == x.shape:
        # The module does something: a zero gate / output conv would make the comparison vacuous.
        assert (a - x).abs().max() > 1e-2
    return a


# --------------------------------------------------------------------------------------------------
# OCNet (openseg-group/OCNet.pytorch)
# --------------------------------------------------------------------------------------------------
def _conv_abn(ours: str, ref: str) -> dict[str, str]:
    """Our conv_bn_relu layers (0 = conv, 1 = BN) -> official Sequential(conv, InPlaceABNSync)."""
    return {f"{ours}.0": f"{ref}.0", f"{ours}.1": f"{ref}.1.bn"}


def _sab(ours: str, ref: str) -> dict[str, str]:
    """Our SelfAttentionBlock -> the official _SelfAttentionBlock / _PyramidSelfAttentionBlock."""
    return {f"{ours}.f_key.0": f"{ref}.f_key.0", f"{ours}.f_key.1": f"{ref}.f_key.1.bn",
            f"{ours}.f_value": f"{ref}.f_value", f"{ours}.W": f"{ref}.W"}


def _base_oc_map(ours: str = "", ref: str = "") -> dict[str, str]:
    p = f"{ours}." if ours else ""
    q = f"{ref}." if ref else ""
    return {**_sab(f"{p}attention", f"{q}stages.0"), **_conv_abn(f"{p}fuse", f"{q}conv_bn_dropout")}


def _pyramid_oc_map(n_sizes: int, ours: str = "", ref: str = "") -> dict[str, str]:
    p = f"{ours}." if ours else ""
    q = f"{ref}." if ref else ""
    m = {**_conv_abn(f"{p}up_dr", f"{q}up_dr"), **_conv_abn(f"{p}fuse", f"{q}conv_bn_dropout")}
    for i in range(n_sizes):
        m.update(_sab(f"{p}stages.{i}", f"{q}stages.{i}"))
    return m


def _asp_oc_map(ours: str = "", ref: str = "") -> dict[str, str]:
    p = f"{ours}." if ours else ""
    q = f"{ref}." if ref else ""
    m = {
        **_conv_abn(f"{p}context", f"{q}context"),  # context.0 conv3x3 (bias), context.1 ABN
        **_sab(f"{p}context.3", f"{q}context.2.stages.0"),
        f"{p}context.4": f"{q}context.2.conv_bn_dropout.0",
        f"{p}context.5": f"{q}context.2.conv_bn_dropout.1.bn",
        **_conv_abn(f"{p}fuse", f"{q}conv_bn_dropout"),
    }
    for i, name in enumerate(["conv2", "conv3", "conv4", "conv5"]):
        m.update(_conv_abn(f"{p}branches.{i}", f"{q}{name}"))
    return m


def test_oc_base_matches_official_baseoc_module():
    c = 16
    ours = build_attention("oc", c)
    ref = R.BaseOC_Module(in_channels=c, out_channels=c, key_channels=c // 2, value_channels=c // 2,
                          dropout=0.05, sizes=([1]))
    ours, ref = _pair(ours, ref, _base_oc_map())
    _check(ours, ref, _x(c))


@pytest.mark.parametrize("sizes", [[1, 2, 3], [1, 2, 3, 6]])
def test_oc_pyramid_matches_official_loop_on_uneven_map(sizes):
    # 7 x 11 with grids 2, 3, 6: no grid divides either side, so the official "the last region
    # takes the remainder" rule is exercised on both axes.
    c = 16
    ours = build_attention("oc_pyramid", c, sizes=sizes)
    ref = R.Pyramid_OC_Module(in_channels=c, out_channels=c, dropout=0.05, sizes=sizes)
    ours, ref = _pair(ours, ref, _pyramid_oc_map(len(sizes)))
    _check(ours, ref, _x(c))


@pytest.mark.parametrize("dilations", [(2, 3, 4), (12, 24, 36)])
def test_oc_asp_matches_official_asp_oc_module(dilations):
    c = 16
    ours = build_attention("oc_asp", c, dilations=list(dilations))
    ref = R.ASP_OC_Module(c, c // 2, dilations=dilations)
    ours, ref = _pair(ours, ref, _asp_oc_map())
    _check(ours, ref, _x(c))


@pytest.mark.parametrize("attention,variant", [("oc", "base"), ("oc_pyramid", "pyramid"), ("oc_asp", "asp")])
def test_oc_head_matches_official_network_head(attention, variant):
    cin, c, k = 24, 16, 5
    ours = OCHead([8, cin], k, attention=attention, channels=c)
    ref = R.OCNetHead(variant, cin, c, k)
    if variant == "base":
        m = {**_conv_abn("reduce", "context"), **_base_oc_map("attention", "context.2")}
    elif variant == "pyramid":
        m = {"reduce.0": "layer5.0", "reduce.1": "layer5.1.bn", **_pyramid_oc_map(4, "attention", "context")}
    else:
        m = {**_conv_abn("reduce", "context"), **_asp_oc_map("attention", "context.2")}
    m["cls"] = "cls"
    ours, ref = _pair(ours, ref, m)
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(2, cin, *SHAPE_HW, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours([torch.zeros(1), feat]), ref(feat), **TOL)


# --------------------------------------------------------------------------------------------------
# SE (hujie-frank/SENet Caffe model)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c,r", [(64, 16), (48, 8)])
def test_se_matches_official_caffe_unit(c, r):
    ours = build_attention("se", c, reduction=r)
    assert ours.hidden == c // r  # exact C/r, as the prototxt (256 -> 16)
    ref = R.SECaffe(c, r)
    ours, ref = _pair(ours, ref, {"fc.0": "down", "fc.2": "up"})
    assert ref.down.bias is not None and ours.fc[0].bias is not None
    _check(ours, ref, _x(c))


# --------------------------------------------------------------------------------------------------
# CBAM (Jongchan/attention-module)
# --------------------------------------------------------------------------------------------------
def test_cbam_matches_official():
    c = 32
    ours = build_attention("cbam", c)
    ref = R.CBAM(c, 16)
    assert ours.spatial_gate.bn.momentum == ref.SpatialGate.spatial.bn.momentum == 0.01
    assert ours.spatial_gate.bn.eps == ref.SpatialGate.spatial.bn.eps
    m = {"channel_gate.mlp.0": "ChannelGate.mlp.1", "channel_gate.mlp.2": "ChannelGate.mlp.3",
         "spatial_gate.conv": "SpatialGate.spatial.conv", "spatial_gate.bn": "SpatialGate.spatial.bn"}
    ours, ref = _pair(ours, ref, m)
    _check(ours, ref, _x(c))


# --------------------------------------------------------------------------------------------------
# SK (implus/SKNet Caffe model)
# --------------------------------------------------------------------------------------------------
def test_sk_matches_official_caffe_unit():
    c, groups = 64, 32
    ours = build_attention("sk", c, groups=groups)
    d = max(c // 16, 32)  # paper Eq. 4 with r = 16, L = 32 (the prototxt: 128 -> 32)
    assert ours.dim == d and ours.select.bias is None
    ref = R.SKCaffe(c, groups, d)
    m = {"convs.0.0": "conv3x3g32", "convs.0.1": "conv3x3g32_bn",
         "convs.1.0": "conv3x3g32d2", "convs.1.1": "conv3x3g32d2_bn",
         "fuse.0": "B_fc1", "fuse.1": "B_fc1_bn", "select": "B_fc2"}
    ours, ref = _pair(ours, ref, m)
    _check(ours, ref, _x(c))


# --------------------------------------------------------------------------------------------------
# ECA (BangguWu/ECANet)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [64, 256])
def test_eca_matches_official(c):
    ours = build_attention("eca", c)
    k = R.eca_k_size(c)
    assert ours.k_size == k and k == {64: 3, 256: 5}[c]
    ref = R.eca_layer(c, k)
    ours, ref = _pair(ours, ref, {"conv": "conv"})
    _check(ours, ref, _x(c))


# --------------------------------------------------------------------------------------------------
# SGE (implus/PytorchInsight)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [4, 8])
def test_sge_matches_official(groups):
    c = 32
    ours = build_attention("sge", c, groups=groups)
    ref = R.SpatialGroupEnhance(groups)
    ours, ref = _pair(ours, ref, {"weight": "weight", "bias": "bias"})
    _check(ours, ref, _x(c))


# --------------------------------------------------------------------------------------------------
# GC (xvjiarui/GCNet)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["att", "avg"])
@pytest.mark.parametrize("fusions", [["channel_add"], ["channel_mul"], ["channel_add", "channel_mul"]])
def test_gc_matches_official_context_block(pool, fusions):
    c = 16
    ours = build_attention("gc", c, ratio=0.25, pooling_type=pool, fusion_types=fusions)
    ref = R.ContextBlock2d(c, int(c * 0.25), pool, fusions)
    m = {name: name for name in ("conv_mask", "channel_add_conv", "channel_mul_conv")}
    ours, ref = _pair(ours, ref, m)
    _check(ours, ref, _x(c))


# --------------------------------------------------------------------------------------------------
# Non-local (mmcv NonLocal2d)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,use_scale", [("embedded_gaussian", True), ("embedded_gaussian", False),
                                            ("gaussian", True), ("dot_product", True)])
@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("use_bn", [True, False])
def test_nl_matches_mmcv_nonlocal2d(mode, use_scale, sub_sample, use_bn):
    c = 16
    ours = build_attention("nl", c, mode=mode, use_scale=use_scale, sub_sample=sub_sample, use_bn=use_bn)
    ref = R.NonLocal2d(c, reduction=2, use_scale=use_scale, norm=use_bn, mode=mode, sub_sample=sub_sample)
    sub = ".0" if sub_sample else ""
    m = {"g": f"g{sub}.conv"}
    if mode != "gaussian":
        m.update(theta="theta.conv", phi=f"phi{sub}.conv")
    if use_bn:
        m.update({"conv_out.0": "conv_out.conv", "conv_out.1": "conv_out.bn"})
    else:
        m["conv_out"] = "conv_out.conv"
    ours, ref = _pair(ours, ref, m)
    _check(ours, ref, _x(c))


# --------------------------------------------------------------------------------------------------
# CC (speedinghzl/CCNet pure-PyTorch)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recurrence", [1, 2])
def test_cc_matches_official_criss_cross(recurrence):
    c = 16
    ours = build_attention("cc", c, recurrence=recurrence)
    ref = R.RCCA(c, recurrence)
    m = {name: f"cca.{name}" for name in ("query_conv", "key_conv", "value_conv", "gamma")}
    ours, ref = _pair(ours, ref, m)
    _check(ours, ref, _x(c))


# --------------------------------------------------------------------------------------------------
# EMA (XiaLiPKU/EMANet EMAU)
# --------------------------------------------------------------------------------------------------
def _ema_pair(eps: float, c: int = 16, k: int = 8):
    ours = build_attention("ema", c, num_bases=k, stages=3)
    ref = R.EMAU(c, k, stage_num=3, eps=eps)
    ours, ref = _pair(ours, ref, {"bases": "mu", "conv1": "conv1", "conv2": "conv2"})
    with torch.no_grad():  # bases as the official init keeps them: unit columns
        ours.bases.div_(ours.bases.norm(dim=1, keepdim=True))
        ref.mu.copy_(ours.bases)
    return ours, ref


def test_ema_matches_official_emau_without_its_epsilon():
    # With the official 1e-6 set to 0, the two are the same function to float64 precision: the
    # epsilon is the only difference (ours: F.normalize, x / max(||x||, 1e-12), as mmseg's
    # EMAModule, for both the L1 normalisation of z over positions and the L2 one of the bases).
    ours, ref = _ema_pair(eps=0.0)
    x = _x(16)
    with torch.no_grad():
        a = ours(x)
        b, mu = ref(x)
        mu_ours, _ = ours.em(ours.conv1(x).flatten(2))
    torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(mu_ours, mu, **TOL)
    assert (a - x).abs().max() > 1e-2


def test_ema_matches_official_emau():
    # The official code divides by (1e-6 + norm) where ours divides by max(norm, 1e-12). Per EM
    # step this rescales each base by 1 / (1 + 1e-6 / ||X z_k||) (the z normalisation's 1e-6
    # only rescales a column of z_, which the following L2 normalisation removes, up to the same
    # order). A relative perturbation delta of the bases moves the logits X^T mu by about
    # delta * |X^T mu|, so each of the 3 steps and the reconstruction carry a relative error of
    # at most delta * (1 + max |X^T mu|). We bound delta from this input and check the outputs
    # (magnitude O(1)) against stages * delta * (1 + max|X^T mu|) * max|out| (here ~3e-5, with an
    # observed difference ~1e-7); at eps = 0 they agree to 1e-10 (above).
    ours, ref = _ema_pair(eps=1e-6)
    x = _x(16)
    with torch.no_grad():
        a = ours(x)
        b, _ = ref(x)
        feats = ours.conv1(x).flatten(2)
        mu, z = ours.em(feats)
        m = torch.bmm(feats, z / z.sum(dim=1, keepdim=True))  # X z_ before the L2 normalisation
        delta = 1e-6 / m.norm(dim=1).min().item()
        logit = torch.bmm(feats.transpose(1, 2), mu).abs().max().item()
    bound = ours.stages * delta * (1 + logit) * max(1.0, a.abs().max().item())
    assert bound < 1e-4  # the tolerance stays meaningful
    diff = (a - b).abs().max().item()
    assert diff <= bound, (diff, bound)
    assert diff > 0  # the epsilon is really there (float64 noise alone is ~1e-15)


# --------------------------------------------------------------------------------------------------
# DA (junfu1115/DANet PAM_Module / CAM_Module)
# --------------------------------------------------------------------------------------------------
def test_da_branches_match_official_pam_and_cam():
    c = 16
    ours = build_attention("da", c)
    pam, cam = R.PAM_Module(c), R.CAM_Module(c)
    ref = nn.ModuleDict({"pam": pam, "cam": cam})
    ours, ref = _pair(ours, ref, {"pam": "pam", "cam": "cam"})
    x = _x(c)
    _check(ours.pam, ref["pam"], x)
    _check(ours.cam, ref["cam"], x)
    with torch.no_grad():  # the registered module sums the two branches on one input
        torch.testing.assert_close(ours(x), ref["pam"](x) + ref["cam"](x), **TOL)


# --------------------------------------------------------------------------------------------------
# Coordinate attention (the authors' CoordAtt) and axial attention (the authors' AxialAttention)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels, train", [(32, False), (512, True)])
def test_coordatt_matches_the_official_module(channels, train):
    from test_reference_mmseg_heads import randomise

    ours = build_attention("coordatt", channels).double()
    theirs = R.CoordAtt(channels, channels).double()
    assert ours.mid_channels == max(8, channels // 32) == theirs.conv1.out_channels
    randomise(ours)
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the official attribute names
    ours.train(train), theirs.train(train)
    x = torch.randn(2, channels, 7, 11, dtype=torch.float64) if channels < 100 else torch.randn(
        2, channels, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), **TOL)
    torch.testing.assert_close(ours.bn1.running_mean, theirs.bn1.running_mean, **TOL)


def _randomise_axial(module, seed=1):
    """randomise's scales for the parts it has no rule for (Conv1d, BatchNorm1d, the relative table)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point():
                continue
            last = name.rsplit(".", 1)[-1]
            if last in ("weight", "running_var") and p.dim() == 1:  # BN scales and variances
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif last in ("bias", "running_mean"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:  # conv weights and the relative table: N(0, 1 / fan_in)
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / p[0].numel() ** 0.5)


def _axial_reference_pair(channels, groups, span, h, w):
    ours = build_attention("axial", channels, groups=groups, span=span).double()
    _randomise_axial(ours)
    theirs = []
    for block, length, width in ((ours.height_block, h, False), (ours.width_block, w, True)):
        ref_block = R.AxialAttention(channels, channels, groups=groups, kernel_size=length, width=width).double()
        state = {k: v for k, v in block.state_dict().items() if k != "relative"}
        # the authors' table for kernel_size = L is the middle 2L - 1 offsets of ours
        state["relative"] = block.relative.detach()[:, span - length:span + length - 1].clone()
        state["flatten_index"] = ref_block.flatten_index
        ref_block.load_state_dict(state, strict=True)
        theirs.append(ref_block)
    return ours, torch.nn.Sequential(*theirs)


@pytest.mark.parametrize("train", [False, True])
def test_axial_matches_the_authors_module(train):
    ours, theirs = _axial_reference_pair(32, 4, 11, 7, 10)  # span >= both axes, non-square
    ours.train(train), theirs.train(train)
    x = torch.randn(2, 32, 7, 10, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), **TOL)
    torch.testing.assert_close(ours.width_block.bn_output.running_mean, theirs[1].bn_output.running_mean, **TOL)


def test_axial_equals_the_authors_at_kernel_size_and_clips_beyond_the_span():
    ours, theirs = _axial_reference_pair(16, 2, 6, 6, 5)
    ours.eval(), theirs.eval()
    x = torch.randn(1, 16, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), **TOL)
        # beyond the span: offsets past span - 1 read the outermost entries, the output stays finite
        y = ours(torch.randn(1, 16, 15, 13, dtype=torch.float64))
    assert y.shape == (1, 16, 15, 13) and torch.isfinite(y).all()
    emb = ours.height_block.embeddings(15)
    torch.testing.assert_close(emb[:, 14, 0], ours.height_block.relative[:, -1])
    torch.testing.assert_close(emb[:, 0, 14], ours.height_block.relative[:, 0])
    with pytest.raises(ValueError, match="even width"):
        build_attention("axial", 24, groups=8)


# --------------------------------------------------------------------------------------------------
# External attention (MenghaoGuo/EANet), polarized self-attention (External-Attention-pytorch), triplet
# attention, BAM, SimAM, shuffle attention (the authors' modules)
# --------------------------------------------------------------------------------------------------
def _tie_memories(module) -> None:
    """The authors' External_attention keeps linear_1 = linear_0^T (shared storage): give ours the same."""
    with torch.no_grad():
        module.linear_1.weight.copy_(module.linear_0.weight.permute(1, 0, 2))


def _train_both(ours, ref, x):
    ours.train(), ref.train()
    with torch.no_grad():
        a, b = ours(x), ref(x)
    torch.testing.assert_close(a, b, **TOL)
    for (name, p), q in zip(ours.named_buffers(), ref.buffers()):
        if p.is_floating_point():
            torch.testing.assert_close(p, q, **TOL, msg=name)
    return a


EA_MAP = {"conv1": "conv1", "linear_0": "linear_0", "linear_1": "linear_1", "conv2": "conv2"}


@pytest.mark.parametrize("train", [False, True])
def test_external_attention_matches_the_authors_module(train):
    c = 16
    ours = build_attention("external", c, memory_units=6).double()
    _randomise(ours)
    _tie_memories(ours)
    ref = R.External_attention(c, k=6).double()
    _copy(ours, ref, EA_MAP)
    ours.eval(), ref.eval()
    x = _x(c)
    if train:
        _train_both(ours, ref, x)
    else:
        _check(ours, ref, x)


def test_external_attention_starts_tied_and_learns_two_memories():
    ours = build_attention("external", 16, memory_units=6)
    torch.testing.assert_close(ours.linear_1.weight, ours.linear_0.weight.permute(1, 0, 2), rtol=0, atol=0)
    assert abs(ours.linear_0.weight.std().item() - (2 / 16) ** 0.5) < 0.1  # N(0, 2 / C), the authors' last draw
    # The authors' two memories are one storage: an SGD step keeps them transposes of each other; ours do not.
    ref = R.External_attention(16, k=6)
    for module in (ours, ref):
        opt = torch.optim.SGD(module.parameters(), lr=0.5)
        module(torch.randn(2, 16, 5, 7)).square().mean().backward()
        opt.step()
    torch.testing.assert_close(ref.linear_1.weight, ref.linear_0.weight.permute(1, 0, 2), rtol=0, atol=0)
    assert (ours.linear_1.weight - ours.linear_0.weight.permute(1, 0, 2)).abs().max() > 1e-4


def test_external_head_matches_eanet():
    from segattn.models.heads import build_head

    ours = build_head(dict(name="external", channels=16, out_channels=8, memory_units=6), [8, 16, 32, 24], 5).double()
    _randomise(ours)
    _tie_memories(ours.attention)
    ref = R.EANetHead(24, 16, 8, 5, k=6).double()
    m = {"fc0.0": "fc0.conv", "fc0.1": "fc0.bn", "fc1.0": "fc1.0.conv", "fc1.1": "fc1.0.bn", "cls": "fc2",
         **{f"attention.{k}": f"linu.{v}" for k, v in EA_MAP.items()}}
    _copy(ours, ref, m)
    ours.eval(), ref.eval()
    feat = _x(24, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours([None, None, None, feat]), ref(feat), **TOL)


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
def test_polarized_matches_external_attention_pytorch(layout):
    c = 16
    ours = build_attention("polarized", c, layout=layout)
    ref = (R.ParallelPolarizedSelfAttention if layout == "parallel" else R.SequentialPolarizedSelfAttention)(c)
    names = ("ch_wv", "ch_wq", "ch_wz", "ln", "sp_wv", "sp_wq")
    ours, ref = _pair(ours, ref, {n: n for n in names})
    _check(ours, ref, _x(c))


TRIPLET_MAP = {f"{b}.{part}": f"{b}.conv.{part}" for b in ("cw", "hc", "hw") for part in ("conv", "bn")}


@pytest.mark.parametrize("train", [False, True])
def test_triplet_matches_the_official_module(train):
    c = 12
    ours = build_attention("triplet", c)
    ref = R.TripletAttention()
    ours, ref = _pair(ours, ref, TRIPLET_MAP)
    x = _x(c)
    if train:
        _train_both(ours, ref, x)
    else:
        _check(ours, ref, x)
    ours, ref = _pair(build_attention("triplet", c, no_spatial=True), R.TripletAttention(no_spatial=True),
                      {k: v for k, v in TRIPLET_MAP.items() if not k.startswith("hw")})
    _check(ours, ref, x)


BAM_MAP = {"channel_gate.0": "channel_att.gate_c.gate_c_fc_0", "channel_gate.1": "channel_att.gate_c.gate_c_bn_1",
           "channel_gate.3": "channel_att.gate_c.gate_c_fc_final",
           "spatial_gate.0": "spatial_att.gate_s.gate_s_conv_reduce0",
           "spatial_gate.1": "spatial_att.gate_s.gate_s_bn_reduce0",
           "spatial_gate.3": "spatial_att.gate_s.gate_s_conv_di_0", "spatial_gate.4": "spatial_att.gate_s.gate_s_bn_di_0",
           "spatial_gate.6": "spatial_att.gate_s.gate_s_conv_di_1", "spatial_gate.7": "spatial_att.gate_s.gate_s_bn_di_1",
           "spatial_gate.9": "spatial_att.gate_s.gate_s_conv_final"}


@pytest.mark.parametrize("train", [False, True])
def test_bam_with_the_authors_product_matches_their_module_on_square_maps(train):
    c = 32
    ours, ref = _pair(build_attention("bam", c, combine="product"), R.BAM(c), BAM_MAP)
    x = torch.randn(2, c, 9, 9, dtype=torch.float64)
    if train:
        _train_both(ours, ref, x)
    else:
        _check(ours, ref, x)


@pytest.mark.parametrize("train", [False, True])
def test_bam_is_the_papers_on_non_square_maps(train):
    """The paper's sum and global pooling (the authors' module with those two changes). The authors' own
    pools H x H windows: on 7 x 11 it averages the left 7 x 7 only, on 7 x 15 it gives its FC two windows'
    worth of inputs (an error), and on 11 x 7 it has no window at all (an error)."""
    c = 32
    ours, ref = _pair(build_attention("bam", c), R.BAM(c, global_pool=True, combine="sum"), BAM_MAP)
    x = _x(c)
    if train:
        _train_both(ours, ref, x)
    else:
        _check(ours, ref, x)
    official = R.BAM(c, combine="sum").double().eval()
    official.load_state_dict(ref.state_dict())
    ref.eval()
    with torch.no_grad():
        assert (official(x) - ref(x)).abs().max() > 1e-3  # the left 7 x 7 only
        torch.testing.assert_close(official(x[..., :7]), ref(x[..., :7]), **TOL)  # square: the same
    for hw in ((7, 15), (11, 7)):
        with pytest.raises(RuntimeError):
            official(torch.randn(2, c, *hw, dtype=torch.float64))


def test_simam_matches_the_official_module_and_is_finite_on_1x1():
    c = 8
    ours, ref = build_attention("simam", c).double(), R.simam_module(c).double()
    _check(ours, ref, _x(c))
    x = torch.randn(2, c, 1, 1, dtype=torch.float64)
    assert torch.isnan(ref(x)).all()  # 0 / 0 in the official code
    torch.testing.assert_close(ours(x), x * torch.sigmoid(torch.tensor(0.5, dtype=torch.float64)), **TOL)


@pytest.mark.parametrize("c, groups", [(32, 4), (16, 2), (64, 8)])
def test_shuffle_matches_sa_net(c, groups):
    ours = build_attention("shuffle", c, groups=groups)
    ref = R.sa_layer(c, groups=groups)
    names = ("cweight", "cbias", "sweight", "sbias", "gn")
    ours, ref = _pair(ours, ref, {n: n for n in names})
    _check(ours, ref, _x(c))
    with pytest.raises(ValueError, match="multiple of 2 \\* groups"):
        build_attention("shuffle", 24, groups=8)
