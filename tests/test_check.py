"""The head checker (``python -m segattn.check``) on every built-in head, and on modules that break what it
checks: each gating check fails where it should, naming itself."""

import os

import pytest
import torch
import torch.nn as nn
import yaml

from conftest import REPO, forget_plugins
from segattn import check
from segattn.models.heads import head_names

WIDTHS = [16, 32, 64, 128]


def head_cfg(name, **kw):
    cfg = yaml.safe_load(open(os.path.join(REPO, "conf", "head", f"{name}.yaml")))
    cfg["channels"] = 64  # SGE needs a multiple of its 64 groups
    return {**cfg, **kw}


@pytest.mark.parametrize("name", head_names())
def test_every_built_in_head_passes_the_gating_checks(name):
    checks = check.run_checks(head_cfg(name), WIDTHS, report=False)
    assert [c.name for c in checks] == ["shapes", "deterministic", "batch independence", "recording", "gradients",
                                        "loss decreases"]
    failed = check.failures(checks)
    assert not failed, "; ".join(f"{c.name}: {c.why}" for c in failed)


def test_the_hamburgers_mmseg_draw_is_what_the_checker_catches():
    """mmseg's LightHamHead draws new NMF bases at every forward: eval_bases=random fails determinism and batch
    independence, as the Hamburger did before its fixed evaluation bases (the default)."""
    failed = {c.name: c for c in check.failures(check.run_checks(head_cfg("ham", eval_bases="random"), WIDTHS,
                                                                 report=False))}
    assert set(failed) >= {"deterministic", "batch independence"}
    assert "predictions change from call to call" in failed["deterministic"].why


class _Probe(nn.Module):
    """A gate whose ``flaw`` breaks one check: ``mix`` adds the batch mean, ``dead`` owns a parameter that never
    reaches the output, ``noise`` adds fresh noise in eval, ``shape`` halves the map, ``nan`` divides by zero."""

    flaw = None

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.unused = nn.Parameter(torch.ones(1))

    def forward(self, x):
        y = x * torch.sigmoid(self.scale * x.mean((2, 3), keepdim=True))
        y = y * self.unused if self.flaw != "dead" else y
        if self.flaw == "mix":
            y = y + x.mean(0, keepdim=True)
        if self.flaw == "noise":
            y = y + torch.randn_like(y)
        if self.flaw == "shape":
            y = y[..., ::2, ::2]
        if self.flaw == "nan":
            y = y / 0
        return y


@pytest.fixture
def probe():
    from segattn.models.attention import ATTENTIONS, register

    register("probe")(_Probe)
    yield _Probe
    ATTENTIONS.pop("probe")
    _Probe.flaw = None


@pytest.mark.parametrize("flaw, failing, words", [
    (None, set(), ""),
    ("mix", {"batch independence"}, "mixes the samples of a batch"),
    ("dead", {"gradients"}, "unused"),
    ("noise", {"deterministic"}, "change from call to call"),
    ("nan", {"shapes"}, "non-finite"),
])
def test_a_flawed_module_fails_the_check_that_names_its_flaw(probe, flaw, failing, words):
    """A flaw fails its own check, with a message that says what is wrong; mixing the batch and a dead
    parameter fail nothing else (noise and NaN spoil more than one check: all of them are listed)."""
    probe.flaw = flaw
    failed = {c.name: c.why for c in check.failures(check.run_checks({"name": "probe", "channels": 16}, WIDTHS,
                                                                      report=False))}
    if flaw in (None, "mix", "dead"):
        assert set(failed) == failing
    assert failing <= set(failed)
    for name in failing:
        assert words in failed[name]


def test_a_head_of_the_wrong_size_fails_the_shape_check():
    from segattn.models.heads import HEADS, BaseDecodeHead, register_head

    @register_head("probe_head")
    class Coarse(BaseDecodeHead):
        def __init__(self, in_channels, num_classes, channels=16, dropout=0.0):
            super().__init__()
            self.build_classifier(in_channels[-1], num_classes, dropout)

        def forward(self, feats):
            return self.classify(feats[-1][..., ::2, ::2])  # half the map it reads

    try:
        (failed,) = check.failures(check.run_checks({"name": "probe_head"}, WIDTHS, report=False))
    finally:
        HEADS.pop("probe_head")
    assert failed.name == "shapes" and "expected (2, 5, h, w) with (h, w) one of" in failed.why


def test_a_declared_exemption_must_name_a_parameter(probe):
    probe.flaw = "dead"
    probe.grad_exempt = {"unused": "is not used, on purpose"}
    try:
        assert not check.failures(check.run_checks({"name": "probe", "channels": 16}, WIDTHS, report=False))
        probe.grad_exempt = {"nonexistent": "typo"}
        (failed,) = check.failures(check.run_checks({"name": "probe", "channels": 16}, WIDTHS, report=False))
        assert failed.name == "gradients" and "nonexistent" in failed.why
    finally:
        del probe.grad_exempt


def test_the_command_line_checks_a_plugin_and_exits_1_naming_the_failed_check(tmp_path, capsys):
    """``python -m segattn.check`` (in-process): the example plugin passes with its reported rows; a plugin that
    mixes the samples of a batch exits 1 naming batch independence."""
    from conftest import EXAMPLE_PLUGIN

    try:
        code = check.main([f"plugins=[{EXAMPLE_PLUGIN}]", "head=custom", "head.name=pooled_nl", "head.channels=16",
                           "backbone.width=8", "--export", "torchscript"])
        out = capsys.readouterr()
        assert code == 0, out.err
        for row in ("shapes", "batch independence", "gradients", "bf16 autocast", "export", "cost at 97x97"):
            assert row in out.out
        assert "1 exempt" in out.out and "torchscript: ok" in out.out and "GFLOPs forward" in out.out
        assert "onnx" not in out.out  # --export chose the formats

        mixer = tmp_path / "mixer.py"
        mixer.write_text("import segattn, torch.nn as nn\n\n"
                         "@segattn.register_attention('mixer')\nclass Mixer(nn.Module):\n"
                         "    def __init__(self, channels):\n        super().__init__()\n"
                         "        self.w = nn.Conv2d(channels, channels, 1)\n"
                         "    def forward(self, x):\n        return self.w(x) + x.mean(0, keepdim=True)\n")
        code = check.main([f"plugins=[{mixer}]", "head=custom", "head.name=mixer", "head.channels=16",
                           "backbone.width=8", "--export", "none"])
        err = capsys.readouterr().err
        assert code == 1 and "FAILED batch independence: sample 0 alone differs" in err
    finally:
        forget_plugins()
