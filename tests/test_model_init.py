"""model.init (the heads' start) and the residual scales the trainer logs as train/gamma/<parameter>."""

import os

import pytest
import torch

from conftest import TINY, run_train
from segattn.models import build_model, residual_scales

BB = {"depth": 18, "width": 8}


def _model(head: str, init: str = "mmseg", **kw):
    torch.manual_seed(0)
    return build_model(BB, {"name": head, "channels": 32, **kw}, 19, {"channels": 16}, init=init)


def test_init_switch_changes_the_heads_convolutions_only():
    """mmseg: N(0, 0.01) classifiers and Kaiming fan_out convs; pytorch: PyTorch's default start for those,
    while the backbone and the mechanisms' own starts (zero gammas, zero residual BN) stay as they were."""
    mm, pt = _model("nl"), _model("nl", "pytorch")
    assert mm.head.cls.weight.std().item() == pytest.approx(0.01, rel=0.2)
    # PyTorch's Conv2d default: Kaiming uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1 / 32 ** 0.5
    assert pt.head.cls.weight.abs().max() <= bound and pt.head.cls.weight.std().item() > 3 * 0.01
    assert pt.head.cls.bias.abs().max() > 0 and mm.head.cls.bias.abs().max() == 0
    assert pt.aux_head.cls.weight.std().item() > 3 * 0.01
    assert torch.equal(mm.backbone.conv1.weight, pt.backbone.conv1.weight)
    assert torch.equal(pt.head.attention.conv_out[1].weight, torch.zeros(32))  # Non-local's residual starts at 0
    assert _model("da", "pytorch").head.attention.pam.gamma.item() == 0.0
    with pytest.raises(ValueError, match="model.init must be one of mmseg, pytorch, got 'xavier'"):
        _model("fcn", "xavier")


@pytest.mark.parametrize("head, names", [
    ("da", {"head.attention.pam.gamma", "head.attention.cam.gamma"}),
    ("cc", {"head.attention.gamma"}),
    ("nl", {"head.attention.conv_out.1.weight_rms"}),
    ("gc", {"head.attention.channel_add_conv.3.weight_rms"}),
    ("se", set()),
    ("fcn", set()),
])
def test_residual_scales_are_the_heads_zero_initialised_weights(head, names):
    model = _model(head)
    scales = residual_scales(model)
    assert set(scales) == names and all(v == 0.0 for v in scales.values())
    with torch.no_grad():
        for p in model.head.parameters():
            p.fill_(0.5)
    assert all(v == pytest.approx(0.5) for v in residual_scales(model).values())  # values, not names, move


@pytest.mark.parametrize("head", ["da", "cc", "gc", "nl", "shuffle"])
def test_residual_init_starts_the_zero_scales_elsewhere_and_nothing_else(head):
    """model.residual_init: 0 (the default) is the papers' start, bit for bit; 0.1 starts every residual
    scale off zero (scalars and per-channel scales at 0.1, a conv weight at RMS 0.1 / sqrt(fan in)) and
    changes no other weight of the head or the backbone."""
    torch.manual_seed(0)
    default = build_model(BB, {"name": head, "channels": 32}, 19, {"channels": 16}, init="pytorch")
    torch.manual_seed(0)
    zero = build_model(BB, {"name": head, "channels": 32}, 19, {"channels": 16}, init="pytorch", residual_init=0.0)
    torch.manual_seed(0)
    opened = build_model(BB, {"name": head, "channels": 32}, 19, {"channels": 16}, init="pytorch",
                         residual_init=0.1)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), zero.state_dict().values()))
    names = opened.head.residual_scale_names
    assert names and names == default.head.residual_scale_names  # still logged as the residual scales
    scales = residual_scales(opened)
    params = dict(opened.head.named_parameters())
    for name in names:
        p = params[name]
        key = f"head.{name}" if p.numel() == 1 else f"head.{name}_rms"
        if head == "gc":  # GCNet's last 1x1 conv: N(0, (0.1 / sqrt(fan in))^2), fan in = its input channels
            assert scales[key] == pytest.approx(0.1 / p[0].numel() ** 0.5, rel=0.35) and p.std() > 0
        else:
            assert torch.all(p == 0.1), name
    same = {n: p for n, p in opened.state_dict().items() if not any(n == f"head.{m}" for m in names)}
    ref = default.state_dict()
    assert all(torch.equal(p, ref[n]) for n, p in same.items() if not n.startswith("head.")), "the backbone moved"


def test_training_logs_the_residual_scales(tiny_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = str(tmp_path / "run")
    run_train([*TINY, "head=da", f"dataset.root={tiny_root}", "trainer.max_iters=2", "trainer.val_interval=2",
               "trainer.log_interval=1", "optimizer=adamw", "visualize.max_size=64", f"hydra.run.dir={run_dir}"])
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("train/gamma/head.attention.pam.gamma", "train/gamma/head.attention.cam.gamma"):
        values = [s.value for s in acc.Scalars(tag)]
        assert len(values) == 2 and values[-1] != 0.0, (tag, values)  # AdamW moved it off zero
    assert os.path.isfile(os.path.join(run_dir, "metrics.json"))
