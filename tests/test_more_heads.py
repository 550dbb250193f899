"""The rest of the attention family (DNL, ISA, coordinate attention, APC, OCR, ANN, axial): behaviour,
and for the mmseg heads the same function as mmseg 1.x's, weights copied, float64, non-square maps.

The comparison machinery (randomise every parameter and BN buffer, copy through an explicit name map
covering both state dicts, rtol = atol = 1e-10) is tests/test_reference_mmseg_heads.py's; the
re-implementations of mmseg's heads are in tests/reference_mmseg_more.py.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import reference_mmseg_more as ref
from segattn.models.attention import build_attention
from segattn.models.attention.record import attention_maps, record_attention
from segattn.models.heads import build_head, head_facts, head_names
from test_reference_mmseg_heads import TOL, _compose, base, recipe_head_counts, cbr, check, feats, pair, rules_between_convs

# the heads' declared facts (mmseg_params), checked against the reference heads below
MMSEG_COUNTS = {name: head_facts(name).mmseg_params for name in ("dnl", "isa", "apc", "ann")}


def _reference_recipe_head(name: str) -> torch.nn.Module:
    # mmseg configs/_base_/models/<model>_r50-d8.py decode_head settings (1.x).
    full = dict(in_channels=2048, channels=512, num_classes=19, dropout_ratio=0.1)
    if name == "dnl":
        return ref.DNLHead(reduction=2, use_scale=True, mode="embedded_gaussian", **full)
    if name == "isa":
        return ref.ISAHead(isa_channels=256, down_factor=(8, 8), **full)
    if name == "apc":
        return ref.APCHead(pool_scales=(1, 2, 3, 6), fusion=True, **full)
    if name == "ann":  # configs/_base_/models/ann_r50-d8.py: in_index [2, 3], c4 and c5
        full["in_channels"] = [1024, 2048]
        return ref.ANNHead(project_channels=256, query_scales=(1,), key_pool_scales=(1, 3, 6, 8), **full)
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(MMSEG_COUNTS))
def test_recipe_head_has_mmsegs_parameter_count(name):
    n_ours, n_theirs = recipe_head_counts(name, _reference_recipe_head)
    assert (n_ours, n_theirs) == (MMSEG_COUNTS[name], MMSEG_COUNTS[name])


# --------------------------------------------------------------------------------------------------
# DNL
# --------------------------------------------------------------------------------------------------
DNL_RULES = rules_between_convs("dnl_block", [
    ("g.", "g.conv."), ("theta.", "theta.conv."), ("phi.", "phi.conv."), ("conv_mask.", "conv_mask."),
    ("conv_out.0.", "conv_out.conv."), ("conv_out.1.", "conv_out.bn.")])


def dnl_pair(mode="embedded_gaussian"):
    theirs = ref.DNLHead(reduction=2, use_scale=True, mode=mode, temperature=0.05, **base())
    return pair("dnl", theirs, DNL_RULES, channels=16, mode=mode)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product"])
def test_dnl_matches_mmseg(mode):
    ours, theirs = dnl_pair(mode)
    check(ours, theirs, feats(12, 18))


def test_dnl_training_step_matches_mmseg():
    """In training the BN after W_z sees the unary vectors as a batch of 1x1 maps: the same on both sides."""
    ours, theirs = dnl_pair()
    for head in (ours, theirs):
        head.train()
        head.dropout.eval()
    with torch.no_grad():
        check(ours, theirs, feats(12, 18))
    torch.testing.assert_close(ours.attention.conv_out[1].running_var, theirs.dnl_block.conv_out.bn.running_var, **TOL)


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


# --------------------------------------------------------------------------------------------------
# ISA
# --------------------------------------------------------------------------------------------------
def isa_rules():
    rules = [("cls.", "conv_seg.")] + cbr("reduce", "in_conv") + cbr("fuse", "out_conv")
    for rel in ("global_relation", "local_relation"):
        for proj in ("query_project", "key_project"):
            for i in (0, 1):
                rules += cbr(f"attention.{rel}.{proj}.{i}", f"{rel}.{proj}.{i}")
        rules += [(f"attention.{rel}.value_project.", f"{rel}.value_project.")]
        rules += cbr(f"attention.{rel}.output_project", f"{rel}.output_project")
    return rules


@pytest.mark.parametrize("size, down", [((12, 18), (8, 8)), ((11, 13), (3, 5)), ((8, 16), (4, 8))])
def test_isa_matches_mmseg(size, down):
    # (8, 8) on 12x18: padded to 16x24 (2 + 2 rows, 3 + 3 columns); 11x13 by (3, 5): odd pads
    # (1 row before, 0 after ... as mmseg splits them); 8x16 by (4, 8): no padding.
    theirs = ref.ISAHead(isa_channels=8, down_factor=down, **base())
    ours, theirs = pair("isa", theirs, isa_rules(), channels=16, key_channels=8, down_factor=list(down))
    check(ours, theirs, feats(*size))


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


# --------------------------------------------------------------------------------------------------
# Coordinate attention (the authors' CoordAtt; mmseg has none)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels, train", [(32, False), (512, True)])
def test_coordatt_matches_the_official_module(channels, train):
    from test_reference_mmseg_heads import randomise

    ours = build_attention("coordatt", channels).double()
    theirs = ref.CoordAtt(channels, channels).double()
    assert ours.mid_channels == max(8, channels // 32) == theirs.conv1.out_channels
    randomise(ours)
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the official attribute names
    ours.train(train), theirs.train(train)
    x = torch.randn(2, channels, 7, 11, dtype=torch.float64) if channels < 100 else torch.randn(
        2, channels, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), **TOL)
    torch.testing.assert_close(ours.bn1.running_mean, theirs.bn1.running_mean, **TOL)


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


# --------------------------------------------------------------------------------------------------
# APCNet
# --------------------------------------------------------------------------------------------------
def apc_rules(scales, fusion=True):
    rules = [("cls.", "conv_seg.")] + cbr("bottleneck", "bottleneck")
    for i in range(len(scales)):
        ours, theirs = f"attention.acm_modules.{i}", f"acm_modules.{i}"
        convs = ["pooled_redu_conv", "input_redu_conv", "global_info", "residual_conv"]
        for conv in convs + (["fusion_conv"] if fusion else []):
            rules += cbr(f"{ours}.{conv}", f"{theirs}.{conv}")
        rules += [(f"{ours}.gla.", f"{theirs}.gla.")]
    return rules


@pytest.mark.parametrize("size, scales, fusion", [((12, 18), (1, 2, 3, 6), True), ((11, 13), (2, 4), False)])
def test_apc_matches_mmseg(size, scales, fusion):
    # 12x18 and 11x13 pooled to 3x3 / 6x6 / 4x4: uneven, overlapping adaptive-pooling bins
    theirs = ref.APCHead(pool_scales=scales, fusion=fusion, **base())
    ours, theirs = pair("apc", theirs, apc_rules(scales, fusion), channels=16, pool_scales=list(scales), fusion=fusion)
    check(ours, theirs, feats(*size))


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


# --------------------------------------------------------------------------------------------------
# Axial attention (the authors' AxialAttention; mmseg has none)
# --------------------------------------------------------------------------------------------------
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
        ref_block = ref.AxialAttention(channels, channels, groups=groups, kernel_size=length, width=width).double()
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


# --------------------------------------------------------------------------------------------------
# ANN
# --------------------------------------------------------------------------------------------------
def ann_rules():
    rules = [("cls.", "conv_seg.")] + cbr("bottleneck", "bottleneck")
    for block in ("fusion", "context"):
        stage = f"{block}.stages.0"
        rules += cbr(f"{stage}.key_project", f"{stage}.key_project")
        rules += cbr(f"{stage}.query_project", f"{stage}.query_project")  # APNB: the same module, both names
        rules += [(f"{stage}.value_project.", f"{stage}.value_project."),
                  (f"{stage}.out_project.", f"{stage}.out_project.")]
        rules += cbr(f"{block}.bottleneck", f"{block}.bottleneck")
    return rules


@pytest.mark.parametrize("hw", [(7, 10), (12, 5)])
def test_ann_matches_mmseg(hw):
    theirs = ref.ANNHead(project_channels=8, in_channels=[32, 64], channels=16, num_classes=5, dropout_ratio=0.1)
    ours, theirs = pair("ann", theirs, ann_rules(), channels=16, project_channels=8)
    # APNB shares its key and query projection, as mmseg's share_key_query
    assert ours.context.stages[0].query_project is ours.context.stages[0].key_project
    check(ours, theirs, feats(*hw))  # uneven adaptive-pooling bins for 3, 6, 8 on both axes


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


# --------------------------------------------------------------------------------------------------
# OCR
# --------------------------------------------------------------------------------------------------
def ocr_rules():
    block = "object_context"
    rules = [("cls.", "ocr.conv_seg."), ("regions.cls.", "fcn.conv_seg.")] + cbr("regions.convs.0", "fcn.convs.0")
    rules += cbr("bottleneck", "ocr.bottleneck") + cbr(f"{block}.bottleneck", "ocr.object_context_block.bottleneck")
    for proj in ("query_project", "key_project"):
        for i in (0, 1):
            rules += cbr(f"{block}.{proj}.{i}", f"ocr.object_context_block.{proj}.{i}")
    for proj in ("value_project", "out_project"):
        rules += cbr(f"{block}.{proj}", f"ocr.object_context_block.{proj}")
    return rules


@pytest.mark.parametrize("hw", [(7, 10), (12, 5)])
def test_ocr_matches_mmseg(hw):
    theirs = ref.OCRNetCascade([8, 16, 32, 64], channels=16, ocr_channels=8, region_channels=12, num_classes=5)
    ours, theirs = pair("ocr", theirs, ocr_rules(), channels=16, ocr_channels=8, region_channels=12)
    x = feats(*hw)
    with torch.no_grad():
        a, (b, regions) = ours(x), theirs(x)
    assert set(a) == {"out", "regions"} and ours.loss_weights == {"out": 1.0, "regions": 0.4}
    torch.testing.assert_close(a["regions"], regions, **TOL)
    torch.testing.assert_close(a["out"], b, **TOL)


def test_ocr_recipe_head_has_mmsegs_parameter_count():
    """configs/_base_/models/ocrnet_r50-d8.py: FCNHead(1024 -> 256, 1 conv) then OCRHead(2048 -> 512, ocr 256);
    the OCR head alone has 10,632,211 parameters (19 classes); the region FCN is mmseg's FCNHead."""
    cfg = _compose(["+experiment=ocr_r50_d8_cityscapes_80k"])
    head = OmegaConf.to_container(cfg.head, resolve=True)
    assert head["name"] == "ocr" and cfg.model.aux_head.weight == 0  # the region FCN is the c4 FCN
    with torch.device("meta"):
        ours = build_head(head, [256, 512, 1024, 2048], 19)
        theirs = ref.OCRNetCascade([256, 512, 1024, 2048], channels=512, ocr_channels=256, region_channels=256,
                                   num_classes=19)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) - count(ours.regions) == count(theirs.ocr) == 10_632_211
    assert count(ours.regions) == count(theirs.fcn) == 2_364_691
    assert count(ours) == head_facts("ocr").mmseg_params


def test_every_declared_mmseg_count_is_checked_against_a_reference():
    import test_reference_mmseg_heads as first

    declared = {name for name in head_names() if head_facts(name).mmseg_params is not None}
    assert declared == set(first.MMSEG_COUNTS) | set(MMSEG_COUNTS) | {"ocr"}


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
