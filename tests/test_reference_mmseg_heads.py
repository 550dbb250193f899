"""Our heads compute the same function as mmsegmentation 1.x's decode heads.

Each test builds our head (conf/head/<name>.yaml at small widths) and the independent
re-implementation of mmseg's head in tests/reference_mmseg.py, randomises EVERY parameter and BN
buffer of ours (zero-initialised ones included: NL's BN scale, GC's last conv, the gammas), copies
them into the reference through an explicit name map that must cover both state dicts exactly,
and compares the outputs in float64, eval mode, on non-square maps.

Tolerance: rtol = atol = 1e-10. Both sides run in float64 (unit round-off 1.1e-16) on outputs of
order 1; the two implementations order their sums differently (bmm vs einsum vs gather, x / f vs
x * (1 / f)), which costs a few hundred ulps at most over the few-thousand-term reductions here
(observed max |diff| ~1e-14). 1e-10 leaves four orders of margin over that and is still eight
orders below what any real difference (a missing 1/sqrt(C'), a shifted mask, a wrong momentum)
produces (>= 1e-3, see test_the_comparison_can_fail).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import reference_mmseg as ref
from segattn.models.heads import build_head, head_facts, head_names
from segattn.models.attention.psa import psa_mask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CH = [8, 16, 32, 64]
NUM_CLASSES = 5
TOL = dict(rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def head_cfg(name: str, **overrides) -> dict:
    with open(os.path.join(REPO, "conf", "head", f"{name}.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg.update(overrides)
    return cfg


def feats(h: int, w: int, n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(2 * h, 2 * w), (h, w), (h, w), (h, w)]  # a dilated (D8) backbone's stages
    return [torch.randn(n, c, *s, generator=g, dtype=torch.float64) for c, s in zip(IN_CH, sizes)]


@torch.no_grad()
def randomise(module: nn.Module, seed: int = 1) -> None:
    """Every parameter and BN buffer gets a random, non-zero value at a scale that keeps
    activations O(1): conv weights N(0, 1/fan_in), biases N(0, 0.2^2), norm scales and running
    variances U(0.5, 1.5), running means N(0, 0.2^2), scalar gammas +-U(0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(t, kind):
        if kind == "normal":
            return torch.randn(t.shape, generator=g, dtype=t.dtype)
        return torch.rand(t.shape, generator=g, dtype=t.dtype)

    for m in module.modules():
        for name, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if not p.is_floating_point():
                continue
            if isinstance(m, nn.Conv2d) and name == "weight":
                fan_in = p[0].numel()
                p.copy_(rnd(p, "normal") / fan_in ** 0.5)
            elif (isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and name == "weight") or name == "running_var":
                p.copy_(0.5 + rnd(p, "uniform"))
            elif name in ("bias", "running_mean"):
                p.copy_(0.2 * rnd(p, "normal"))
            elif name == "gamma":
                p.copy_((0.5 + rnd(p, "uniform")) * torch.where(rnd(p, "uniform") < 0.5, -1.0, 1.0))
            elif name == "bases":
                p.copy_(nn.functional.normalize(rnd(p, "normal"), dim=1))
            else:
                raise AssertionError(f"randomise: no rule for {type(m).__name__}.{name}")
    for name, p in module.state_dict().items():  # nothing left at a zero initialisation
        if p.is_floating_point():
            assert p.count_nonzero() == p.numel(), name


def cbr(ours: str, theirs: str) -> list[tuple[str, str]]:
    """Our conv_bn_relu Sequential (0 conv, 1 BN) -> mmcv ConvModule (conv, bn)."""
    return [(f"{ours}.0.", f"{theirs}.conv."), (f"{ours}.1.", f"{theirs}.bn.")]


def translate(key: str, rules: list[tuple[str, str]]) -> str:
    hits = [(a, b) for a, b in rules if key == a or (a.endswith(".") and key.startswith(a))]
    assert len(hits) == 1, f"{key}: {len(hits)} rules match ({hits})"
    a, b = hits[0]
    return b if key == a else b + key[len(a):]


@torch.no_grad()
def copy_into(reference: nn.Module, ours: nn.Module, rules: list[tuple[str, str]]) -> None:
    """Load our state dict into the reference through ``rules``; both must be covered exactly."""
    theirs = reference.state_dict()
    mapped = {}
    for k, v in ours.state_dict().items():
        t = translate(k, rules)
        assert t in theirs, f"{k} -> {t}: not in the reference ({sorted(theirs)})"
        assert t not in mapped, f"{t} mapped twice"
        assert theirs[t].numel() == v.numel(), (k, t, tuple(v.shape), tuple(theirs[t].shape))
        mapped[t] = v.detach().clone().reshape(theirs[t].shape)
    missing = sorted(set(theirs) - set(mapped))
    assert not missing, f"reference entries nothing maps to: {missing}"
    reference.load_state_dict(mapped, strict=True)


def pair(name: str, reference: nn.Module, rules, seed: int = 1, **cfg):
    ours = build_head(head_cfg(name, **cfg), IN_CH, NUM_CLASSES).double()
    reference = reference.double()
    randomise(ours, seed)
    copy_into(reference, ours, rules)
    return ours.eval(), reference.eval()


COMMON = [("cls.", "conv_seg.")] + cbr("conv_cat", "conv_cat")


def base(channels: int = 16) -> dict:
    return dict(in_channels=IN_CH[-1], channels=channels, num_classes=NUM_CLASSES, dropout_ratio=0.1)


def rules_between_convs(block: str, block_rules) -> list[tuple[str, str]]:
    return COMMON + cbr("reduce", "convs.0") + cbr("project", "convs.1") + [
        (f"attention.{a}", f"{block}.{b}") for a, b in block_rules]


def check(ours, reference, x):
    with torch.no_grad():
        a, b = ours(x), reference(x)
    torch.testing.assert_close(a, b, **TOL)
    return a


# --------------------------------------------------------------------------------------------------
# the heads
# --------------------------------------------------------------------------------------------------
def test_fcn_matches_mmseg():
    rules = COMMON + cbr("convs.0", "convs.0") + cbr("convs.1", "convs.1")
    ours, theirs = pair("fcn", ref.FCNHead(num_convs=2, concat_input=True, **base()), rules, channels=16)
    check(ours, theirs, feats(12, 18))


def nl_rules(sub_sample: bool):
    g = "g.0.conv." if sub_sample else "g.conv."
    phi = "phi.0.conv." if sub_sample else "phi.conv."
    return rules_between_convs("nl_block", [("g.", g), ("theta.", "theta.conv."), ("phi.", phi),
                                            ("conv_out.0.", "conv_out.conv."), ("conv_out.1.", "conv_out.bn.")])


@pytest.mark.parametrize("sub_sample, size", [(False, (12, 18)), (True, (11, 13))])
def test_nl_matches_mmseg(sub_sample, size):
    # mmseg NLHead(reduction=2, use_scale=True, mode='embedded_gaussian'); sub_sample is mmcv
    # NonLocal2d's MaxPool2d((2, 2)) on g and phi (floor: an odd 11x13 map keeps 5x6 keys).
    theirs = ref.NLHead(reduction=2, use_scale=True, mode="embedded_gaussian", sub_sample=sub_sample, **base())
    ours, theirs = pair("nl", theirs, nl_rules(sub_sample), channels=16, sub_sample=sub_sample)
    if sub_sample:
        assert isinstance(theirs.nl_block.g[1], nn.MaxPool2d) and isinstance(ours.attention.pool, nn.MaxPool2d)
    check(ours, theirs, feats(*size))


def test_cc_matches_mmseg():
    rules = rules_between_convs("cca", [("query_conv.", "query_conv."), ("key_conv.", "key_conv."),
                                        ("value_conv.", "value_conv."), ("gamma", "gamma.scale")])
    # 16 // 8 = 2 query/key channels on both sides.
    ours, theirs = pair("cc", ref.CCHead(recurrence=2, **base()), rules, channels=16)
    assert ours.attention.recurrence == 2
    check(ours, theirs, feats(12, 18))


def test_gc_matches_mmseg():
    rules = rules_between_convs("gc_block", [("", "")])
    theirs = ref.GCHead(ratio=1 / 4.0, pooling_type="att", fusion_types=("channel_add",), **base())
    ours, theirs = pair("gc", theirs, rules, channels=16)
    check(ours, theirs, feats(12, 18))


EMA_RULES = COMMON + cbr("reduce", "ema_in_conv") + cbr("project", "bottleneck") + [
    ("attention.conv1.", "ema_mid_conv.conv."), ("attention.bases", "ema_module.bases"),
    ("attention.conv2.0.", "ema_out_conv.conv."), ("attention.conv2.1.", "ema_out_conv.bn.")]


def ema_pair():
    # mmseg EMAHead(ema_channels, channels, num_bases, num_stages=3, momentum=0.1); ours momentum 0.9
    # weighs the OLD bases, mmseg's 0.1 the new mean: the same update.
    theirs = ref.EMAHead(ema_channels=32, num_bases=8, num_stages=3, concat_input=True, momentum=0.1, **base(16))
    return pair("ema", theirs, EMA_RULES, channels=16, attention_channels=32, num_bases=8, stages=3, momentum=0.9)


def test_ema_matches_mmseg():
    ours, theirs = ema_pair()
    assert not any(p.requires_grad for p in ours.attention.conv1.parameters())
    assert not any(p.requires_grad for p in theirs.ema_mid_conv.parameters())
    check(ours, theirs, feats(12, 18))


def test_ema_training_step_updates_bases_as_mmseg():
    ours, theirs = ema_pair()
    for head in (ours, theirs):
        head.train()
        head.dropout.eval()  # Dropout2d draws its own masks; everything else trains
    x = feats(12, 18)
    before = ours.attention.bases.clone()
    with torch.no_grad():
        a, b = ours(x), theirs(x)  # BN on batch statistics on both sides
        torch.testing.assert_close(a, b, **TOL)
    assert (ours.attention.bases - before).abs().max() > 1e-3  # it did move
    torch.testing.assert_close(ours.attention.bases, theirs.ema_module.bases, **TOL)
    # BN running statistics moved the same way too.
    torch.testing.assert_close(ours.reduce[1].running_mean, theirs.ema_in_conv.bn.running_mean, **TOL)
    torch.testing.assert_close(ours.attention.conv2[1].running_var, theirs.ema_out_conv.bn.running_var, **TOL)
    # A second step starts from the updated bases on both sides.
    x2 = feats(12, 18, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x2), theirs(x2), **TOL)
    torch.testing.assert_close(ours.attention.bases, theirs.ema_module.bases, **TOL)


def test_da_matches_mmseg():
    rules = ([("cls.", "conv_seg."), ("pam_cls.", "pam_conv_seg."), ("cam_cls.", "cam_conv_seg."),
              ("attention.pam.query_conv.", "pam.query_project."), ("attention.pam.key_conv.", "pam.key_project."),
              ("attention.pam.value_conv.", "pam.value_project."), ("attention.pam.gamma", "pam.gamma.scale"),
              ("attention.cam.gamma", "cam.gamma.scale")]
             + cbr("pam_in", "pam_in_conv") + cbr("pam_out", "pam_out_conv")
             + cbr("cam_in", "cam_in_conv") + cbr("cam_out", "cam_out_conv"))
    # 16 channels, reduction 8 -> pam_channels 2 (the recipe: 512 // 8 = mmseg's pam_channels=64).
    ours, theirs = pair("da", ref.DAHead(pam_channels=2, **base()), rules, channels=16)
    x = feats(12, 18)
    with torch.no_grad():
        out = ours(x)
        pam_cam, pam, cam = theirs(x)
    assert set(out) == {"out", "pam", "cam"}
    torch.testing.assert_close(out["out"], pam_cam, **TOL)
    torch.testing.assert_close(out["pam"], pam, **TOL)
    torch.testing.assert_close(out["cam"], cam, **TOL)


def psa_rules(psa_type: str):
    branches = {"collect": ("reduce", "attention"), "distribute": ("reduce_p", "attention_p")}
    if psa_type != "bi-direction":
        branches = {psa_type: ("reduce", "attention")}
    rules = COMMON[:1] + cbr("bottleneck", "bottleneck") + cbr("attention.proj", "proj")
    for branch, (red, att) in branches.items():
        rules += cbr(f"attention.reduce.{branch}", red) + cbr(f"attention.attention.{branch}.0", f"{att}.0")
        rules += [(f"attention.attention.{branch}.1.", f"{att}.1.")]
    return rules


@pytest.mark.parametrize("size, mask, psa_type", [
    ((12, 18), (5, 7), "bi-direction"),    # 6x9 grid, align_corners=False; the mask does not reach it all
    ((11, 13), (5, 7), "bi-direction"),    # both sides odd: 6x7 grid, align_corners=True
    ((12, 18), (4, 6), "bi-direction"),    # even mask sides (mmseg's ADE recipe: 66): half = (m - 1) // 2
    ((11, 13), (66, 66), "bi-direction"),  # the ADE mask, covering the whole grid
    ((12, 18), (5, 7), "collect"),
    ((11, 13), (4, 6), "distribute"),
])
def test_psa_matches_mmseg(size, mask, psa_type):
    theirs = ref.PSAHead(mask_size=mask, psa_type=psa_type, compact=False, shrink_factor=2, normalization_factor=1.0,
                         psa_softmax=True, **base())
    ours, theirs = pair("psa", theirs, psa_rules(psa_type), channels=16, mask_size=list(mask), psa_type=psa_type)
    assert theirs.proj.conv.padding == (1, 1) and ours.attention.proj[0].padding == (1, 1)
    check(ours, theirs, feats(*size))


@pytest.mark.parametrize("h, w, mask", [(6, 9, (5, 7)), (6, 7, (4, 6)), (3, 5, (7, 9)), (5, 4, (1, 3))])
@pytest.mark.parametrize("psa_type", ["collect", "distribute"])
def test_psa_mask_matches_mmcv_cpu_kernel(h, w, mask, psa_type):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, mask[0] * mask[1], h, w, generator=g, dtype=torch.float64)
    torch.testing.assert_close(psa_mask(x, psa_type, mask), ref.psamask(x, psa_type, mask), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# the comparison is not vacuous
# --------------------------------------------------------------------------------------------------
def _fails(ours, theirs, x) -> bool:
    try:
        check(ours, theirs, x)
    except AssertionError:
        return True
    return False


def test_the_comparison_can_fail():
    """Small departures from mmseg in the reference are caught (so a pass means something)."""
    x = feats(12, 18)
    ours, theirs = pair("nl", ref.NLHead(**base()), nl_rules(False), channels=16)
    theirs.nl_block.use_scale = False  # no 1/sqrt(C') on the logits
    assert _fails(ours, theirs, x)

    ours, theirs = pair("psa", ref.PSAHead(mask_size=(5, 7), **base()), psa_rules("bi-direction"), channels=16,
                        mask_size=[5, 7])
    theirs.proj.conv.padding = (0, 0)  # hszhao/semseg's unpadded projection
    assert _fails(ours, theirs, x)

    ours, theirs = pair("cc", ref.CCHead(**base()), rules_between_convs(
        "cca", [("query_conv.", "query_conv."), ("key_conv.", "key_conv."), ("value_conv.", "value_conv."),
                ("gamma", "gamma.scale")]), channels=16)
    theirs.recurrence = 1
    assert _fails(ours, theirs, x)

    ours, theirs = ema_pair()
    theirs.ema_module.momentum = 0.9  # mmseg's momentum read as ours
    for head in (ours, theirs):
        head.train()
        head.dropout.eval()
    with torch.no_grad():
        ours(x), theirs(x)
    assert not torch.allclose(ours.attention.bases, theirs.ema_module.bases, **TOL)


# --------------------------------------------------------------------------------------------------
# the recipes' parameter counts
# --------------------------------------------------------------------------------------------------
# the heads' declared facts (mmseg_params), checked against the reference heads below (ocr: its own test)
MMSEG_COUNTS = {name: head_facts(name).mmseg_params
                for name in ("fcn", "nl", "da", "cc", "gc", "ema", "psa", "dnl", "isa", "apc", "ann", "enc", "dm", "ham")}


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _reference_recipe_head(name: str) -> nn.Module:
    # mmseg configs/_base_/models/<model>_r50-d8.py decode_head settings (1.x).
    full = dict(in_channels=2048, channels=512, num_classes=19, dropout_ratio=0.1)
    if name == "fcn":
        return ref.FCNHead(num_convs=2, concat_input=True, **full)
    if name == "nl":
        return ref.NLHead(reduction=2, use_scale=True, mode="embedded_gaussian", **full)
    if name == "da":
        return ref.DAHead(pam_channels=64, **full)
    if name == "cc":
        return ref.CCHead(recurrence=2, **full)
    if name == "gc":
        return ref.GCHead(ratio=1 / 4.0, pooling_type="att", fusion_types=("channel_add",), **full)
    if name == "ema":
        return ref.EMAHead(ema_channels=512, num_bases=64, num_stages=3, momentum=0.1, concat_input=True,
                           **dict(full, channels=256))
    if name == "psa":
        return ref.PSAHead(mask_size=(97, 97), psa_type="bi-direction", compact=False, shrink_factor=2,
                           normalization_factor=1.0, psa_softmax=True, **full)
    if name == "dnl":
        return ref.DNLHead(reduction=2, use_scale=True, mode="embedded_gaussian", **full)
    if name == "isa":
        return ref.ISAHead(isa_channels=256, down_factor=(8, 8), **full)
    if name == "apc":
        return ref.APCHead(pool_scales=(1, 2, 3, 6), fusion=True, **full)
    if name == "ann":  # configs/_base_/models/ann_r50-d8.py: in_index [2, 3], c4 and c5
        full["in_channels"] = [1024, 2048]
        return ref.ANNHead(project_channels=256, query_scales=(1,), key_pool_scales=(1, 3, 6, 8), **full)
    if name == "enc":  # configs/_base_/models/encnet_r50-d8.py: in_index (1, 2, 3), no laterals
        full.update(in_channels=[512, 1024, 2048], in_index=(1, 2, 3))
        return ref.EncHead(num_codes=32, use_se_loss=True, add_lateral=False, **full)
    if name == "dm":
        return ref.DMHead(filter_sizes=(1, 3, 5, 7), fusion=False, **full)
    if name == "ham":  # LightHamHead on c5 alone at the recipe's widths, NMF2D's defaults
        full.update(in_channels=[2048], in_index=[3])
        return ref.LightHamHead(ham_channels=512, ham_kwargs=dict(MD_S=1, MD_R=64, train_steps=6, eval_steps=7), **full)
    raise KeyError(name)


def recipe_head_counts(name: str, reference_head) -> tuple[int, int]:
    """Parameters of the head ``+experiment=<name>_r50_d8_cityscapes_80k`` builds and of
    ``reference_head(name)``, both at the recipe's widths for 19 classes (on the meta device)."""
    cfg = _compose([f"+experiment={name}_r50_d8_cityscapes_80k"])
    head = OmegaConf.to_container(cfg.head, resolve=True)
    assert head["name"] == name
    with torch.device("meta"):
        ours = build_head(head, [256, 512, 1024, 2048], 19)
        theirs = reference_head(name)
    return sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("name", sorted(MMSEG_COUNTS))
def test_recipe_head_has_mmsegs_parameter_count(name):
    n_ours, n_theirs = recipe_head_counts(name, _reference_recipe_head)
    assert (n_ours, n_theirs) == (MMSEG_COUNTS[name], MMSEG_COUNTS[name]), (name, n_ours, n_theirs)



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
    declared = {name for name in head_names() if head_facts(name).mmseg_params is not None}
    assert declared == set(MMSEG_COUNTS) | {"ocr"}


# --------------------------------------------------------------------------------------------------
# EncNet, DMNet, Hamburger: modules with parameters randomise() has no rule for (Linear, BN1d,
# codewords), and training-mode comparisons (BN batch statistics, NMF's training steps)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def randomise_all(module: nn.Module, seed: int = 1) -> None:
    """randomise's scales for every floating parameter and buffer, by shape: weights N(0, 1/fan_in), norm
    scales and running variances U(0.5, 1.5), biases and running means N(0, 0.2^2); EncNet's codewords
    N(0, 1) and smoothing factors -U(0.02, 0.12) (soft assignments, not one-hot, at 16 channels)."""
    g = torch.Generator().manual_seed(seed)
    state = set(module.state_dict())  # not the non-persistent buffers: constants of the code (the Hamburger's bases)
    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
        if not p.is_floating_point() or name not in state:
            continue
        last = name.rsplit(".", 1)[-1]
        if last == "codewords":
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        elif last == "scale":
            p.copy_(-(0.02 + 0.1 * torch.rand(p.shape, generator=g, dtype=p.dtype)))
        elif last in ("bias", "running_mean"):
            p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        elif last == "running_var" or p.dim() == 1:
            p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
        else:
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / p[0].numel() ** 0.5)


def pair_all(name: str, reference: nn.Module, rules, **cfg):
    ours = build_head(head_cfg(name, **cfg), IN_CH, NUM_CLASSES).double()
    reference = reference.double()
    randomise_all(ours)
    copy_into(reference, ours, rules)
    return ours, reference


def both(ours, theirs, train: bool):
    for head in (ours, theirs):
        head.train(train)
        head.dropout.eval()  # Dropout2d draws its own masks; everything else trains


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def enc_rules(add_lateral: bool):
    rules = [("cls.", "conv_seg."), ("se_layer.", "se_layer.")] + cbr("bottleneck", "bottleneck")
    rules += cbr("attention.encoding_project", "enc_module.encoding_project")
    rules += [("attention.encoding.", "enc_module.encoding.0."), ("attention.encoding_norm.", "enc_module.encoding.1."),
              ("attention.fc.", "enc_module.fc.0.")]
    if add_lateral:
        rules += cbr("lateral_convs.0", "lateral_convs.0") + cbr("lateral_convs.1", "lateral_convs.1")
        rules += cbr("fusion", "fusion")
    return rules


@pytest.mark.parametrize("add_lateral, train", [(False, False), (False, True), (True, False), (True, True)])
def test_enc_matches_mmseg(add_lateral, train):
    theirs = ref.EncHead(num_codes=8, add_lateral=add_lateral, in_channels=IN_CH[1:], in_index=(1, 2, 3), channels=16,
                         num_classes=NUM_CLASSES)
    ours, theirs = pair_all("enc", theirs, enc_rules(add_lateral), channels=16, num_codes=8, add_lateral=add_lateral)
    both(ours, theirs, train)
    x = feats(7, 10)
    with torch.no_grad():
        a, (b, se) = ours(x), theirs(x)
    assert set(a) == {"out", "se"} and a["se"].shape == (2, NUM_CLASSES)
    torch.testing.assert_close(a["out"], b, **TOL)
    torch.testing.assert_close(a["se"], se, **TOL)
    # the soft assignments are soft: no codeword takes every position (a one-hot test would not see the scale)
    assignments = ours.attention.encoding.assignments(torch.randn(1, 70, 16, dtype=torch.float64))
    assert assignments.max() < 0.99
    if train:  # batch statistics moved both sides' running averages alike, the BN1d over the codewords too
        torch.testing.assert_close(ours.attention.encoding_norm.running_var, theirs.enc_module.encoding[1].running_var,
                                   **TOL)
        torch.testing.assert_close(ours.bottleneck[1].running_mean, theirs.bottleneck.bn.running_mean, **TOL)


def test_enc_se_loss_is_mmsegs_and_the_hand_computation():
    from segattn.models.segmentor import Segmentor

    theirs = ref.EncHead(num_codes=8, in_channels=IN_CH[1:], in_index=(1, 2, 3), channels=16, num_classes=NUM_CLASSES)
    ours, theirs = pair_all("enc", theirs, enc_rules(False), channels=16, num_codes=8)
    assert ours.loss_weights == {"out": 1.0, "se": 0.2} and ours.presence_keys == {"se"}
    segmentor = Segmentor(None, ours, NUM_CLASSES)
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 3, (2, 14, 20), generator=g)  # classes 0-2 only: 3 and 4 absent
    target[0, :7] = 255  # ignored pixels count for no class
    target[1][target[1] == 1] = 255  # class 1 absent from image 1 except as ignore
    with torch.no_grad():
        out = ours.eval()(feats(7, 10))
        total, parts = segmentor.loss(out, target)
    mmseg = theirs.se_loss(out["se"], target)
    torch.testing.assert_close(0.2 * parts["se"], mmseg, **TOL)
    # by hand: presence from the labels, then BCE with logits averaged over images and classes
    present = torch.zeros(2, NUM_CLASSES, dtype=torch.float64)
    for i in range(2):
        for k in range(NUM_CLASSES):
            present[i, k] = float((target[i] == k).any())
    assert present[1, 1] == 0 and present[:, 3:].sum() == 0
    logits = out["se"]
    by_hand = sum(math.log1p(math.exp(-l)) if t else math.log1p(math.exp(l))
                  for l, t in zip(logits.flatten().tolist(), present.flatten().tolist())) / present.numel()
    assert abs(parts["se"].item() - by_hand) < 1e-10
    assert abs(total.item() - parts["out"].item() - 0.2 * by_hand) < 1e-8


def dm_rules(filter_sizes, fusion):
    rules = [("cls.", "conv_seg.")] + cbr("bottleneck", "bottleneck")
    for i in range(len(filter_sizes)):
        ours, theirs = f"attention.dcm_modules.{i}", f"dcm_modules.{i}"
        rules += [(f"{ours}.filter_gen_conv.", f"{theirs}.filter_gen_conv."), (f"{ours}.norm.", f"{theirs}.norm.")]
        rules += cbr(f"{ours}.input_redu_conv", f"{theirs}.input_redu_conv")
        if fusion:
            rules += cbr(f"{ours}.fusion_conv", f"{theirs}.fusion_conv")
    return rules


@pytest.mark.parametrize("size, sizes, fusion, train", [((7, 10), (1, 3, 5, 7), False, False),
                                                        ((9, 5), (1, 2, 4, 7), True, False),
                                                        ((7, 10), (1, 3, 5, 7), False, True)])
def test_dm_matches_mmseg(size, sizes, fusion, train):
    # even filter sizes pad one more row / column before than after; 7 > 5 pools a 5-wide map up (adaptive)
    theirs = ref.DMHead(filter_sizes=sizes, fusion=fusion, **base())
    ours, theirs = pair_all("dm", theirs, dm_rules(sizes, fusion), channels=16, filter_sizes=list(sizes), fusion=fusion)
    both(ours, theirs, train)
    x = feats(*size)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    torch.testing.assert_close(a, b, **TOL)
    if train:
        torch.testing.assert_close(ours.attention.dcm_modules[3].norm.running_var, theirs.dcm_modules[3].norm.running_var,
                                   **TOL)


def ham_rules():
    return ([("cls.", "conv_seg."), ("attention.ham_in.", "hamburger.ham_in.conv.")] + cbr("squeeze", "squeeze")
            + cbr("attention.ham_out", "hamburger.ham_out") + cbr("align", "align"))


def ham_pair(spatial=1, one_step=True, steps=(6, 7), eval_bases="random"):
    kwargs = dict(MD_S=spatial, MD_R=4, train_steps=steps[0], eval_steps=steps[1])
    theirs = ref.LightHamHead(ham_channels=16, ham_kwargs=kwargs, one_step=one_step, in_channels=[IN_CH[-1]],
                              in_index=[3], channels=12, num_classes=NUM_CLASSES)
    return pair_all("ham", theirs, ham_rules(), channels=12, ham_channels=16, spatial=spatial, rank=4,
                    train_steps=steps[0], eval_steps=steps[1], eval_bases=eval_bases)


def seeded(module, x, seed=0):
    torch.manual_seed(seed)  # the same random bases on both sides (mmseg's rand_init)
    return module(x)


@pytest.mark.parametrize("spatial, train", [(1, False), (2, False), (1, True)])
def test_ham_matches_mmseg(spatial, train):
    ours, theirs = ham_pair(spatial)
    both(ours, theirs, train)
    x = feats(7, 10)
    with torch.no_grad():
        a, b = seeded(ours, x), seeded(theirs, x)
    torch.testing.assert_close(a, b, **TOL)
    if train:
        torch.testing.assert_close(ours.attention.ham_out[1].running_mean, theirs.hamburger.ham_out.bn.running_mean,
                                   **TOL)
    with torch.no_grad():
        assert max_diff(a, seeded(theirs, x, seed=1)) > 1e-8  # the bases matter: other ones would be seen


@pytest.mark.parametrize("spatial", [1, 2])
def test_ham_fixed_eval_bases_are_mmsegs_nmf_from_those_bases(spatial, monkeypatch):
    """eval_bases=fixed (the default): mmseg's head given the same starting bases, deterministic and the same
    for every sample; training still draws mmseg's random ones."""
    ours, theirs = ham_pair(spatial, eval_bases="fixed")
    both(ours, theirs, False)
    fixed = ours.attention.ham.fixed_bases  # (S, D, R): the one uniform draw the evaluation starts from
    assert fixed.shape == (spatial, 16 // spatial, 4)
    x = feats(7, 10)
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: fixed.repeat(shape[0] // spatial, 1, 1))
    with torch.no_grad():
        b = theirs(x)
    monkeypatch.setattr(torch, "rand", real_rand)
    with torch.no_grad():
        a = seeded(ours, x, seed=0)
        assert max_diff(a, seeded(ours, x, seed=1)) == 0  # the global seed no longer matters
        assert max_diff(a[1:2], ours([f[1:2] for f in x])) < 1e-12  # nor the rest of the batch
    torch.testing.assert_close(a, b, **TOL)
    both(ours, theirs, True)
    with torch.no_grad():
        torch.testing.assert_close(seeded(ours, x), seeded(theirs, x), **TOL)


def test_ham_step_counts_are_mmsegs():
    # eval 7 and training 6 updates: a reference with the two swapped differs in both modes
    ours, _ = ham_pair()
    for train in (False, True):
        _, swapped = ham_pair(steps=(7, 6))
        _, same = ham_pair()
        both(ours, swapped, train), both(ours, same, train)
        x = feats(7, 10)
        with torch.no_grad():
            a = seeded(ours, x)
            assert max_diff(a, seeded(same, x)) < 1e-10 and max_diff(a, seeded(swapped, x)) > 1e-8


def test_ham_one_step_gradient():
    """Training gradients equal the reference's with Enjoy-Hamburger's no_grad NMF iterations (the paper's
    one-step gradient) and differ from mmseg's, which back-propagates through every step."""
    ours, one_step = ham_pair(one_step=True)
    _, unrolled = ham_pair(one_step=False)
    x = feats(7, 10)
    for head in (ours, one_step, unrolled):
        both(head, head, True)
        head.zero_grad()
        seeded(head, x).square().sum().backward()
    names = [name for name, _ in ours.named_parameters()]
    theirs = [translate(name, ham_rules()) for name in names]
    grads = [torch.cat([dict(head.named_parameters())[n].grad.flatten() for n in keys])
             for head, keys in ((ours, names), (one_step, theirs), (unrolled, theirs))]
    torch.testing.assert_close(grads[0], grads[1], **TOL)
    assert max_diff(grads[0], grads[2]) > 1e-6
