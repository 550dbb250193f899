"""Every decode head, tested by default over the registry (``head_names()``: fcn, the papers' heads and the
generic attention head around each mechanism): its config builds and predicts, every parameter learns,
its yaml holds only its options, the README's table lists it; and the heads with behaviour of their own."""

import math
import os

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from segattn.models.heads import HEADS, build_head, head_names, head_options
from segattn.models.heads.da import DAHead

from conftest import REPO
from test_mechanisms import _set_gamma


@pytest.mark.parametrize("name", head_names())
def test_head_config_builds_and_predicts(name):
    path = os.path.join(REPO, "conf", "head", f"{name}.yaml")
    if not os.path.exists(path):  # a variant may share its mechanism's file but still needs a config
        pytest.fail(f"conf/head/{name}.yaml is missing: every registered attention is selectable as head={name}")
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg["name"] == name
    cfg["channels"] = 64  # SGE needs a multiple of its 64 groups
    head = build_head(cfg, [16, 32, 64, 128], num_classes=5)
    feats = [torch.randn(2, c, s, s) for c, s in zip([16, 32, 64, 128], [16, 8, 8, 8])]
    out = head(feats)
    out = out if isinstance(out, dict) else {"out": out}
    assert out["out"].shape == (2, 5, 8, 8)
    assert set(getattr(head, "loss_weights", {"out": 1.0})) >= {"out"}


def _tiny_segmentor(name):
    from segattn.models import build_model

    head = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO, "conf", "head", f"{name}.yaml")))
    head["channels"] = 64
    return build_model({"depth": 18, "output_stride": 8, "width": 8}, head, num_classes=4, aux_head={"channels": 16})


def _batch():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 4, 4), generator=g).repeat_interleave(16, 1).repeat_interleave(16, 2)
    images = torch.randn(2, 3, 64, 64, generator=g) * 0.5 + target[:, None].float()  # learnable from colour
    return images, target


@pytest.mark.parametrize("name", head_names())
def test_every_parameter_gets_a_gradient_and_a_few_steps_lower_the_loss(name):
    """DDP runs without find_unused_parameters: every trainable parameter must be in the graph."""
    torch.manual_seed(0)
    model = _tiny_segmentor(name).train()
    images, target = _batch()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    losses = []
    for step in range(6):
        loss, _ = model.loss(model(images), target)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, f"parameters without gradient: {missing}"
        opt.step()
        losses.append(loss.item())
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0], losses


def test_readme_heads_table_lists_every_head():
    import importlib.util

    spec = importlib.util.spec_from_file_location("heads_table", os.path.join(REPO, "scripts", "heads_table.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.table()
    readme = open(os.path.join(REPO, "README.md")).read()
    assert table in readme, "README's heads table is out of date: paste `python scripts/heads_table.py`"


@pytest.mark.parametrize("name", head_names())
def test_head_yaml_keys_are_the_heads_options_and_a_foreign_node_is_named(name):
    """``head.name=cc`` keeps fcn.yaml's keys: the error names the key, its head and the fix."""
    cfg = yaml.safe_load(open(os.path.join(REPO, "conf", "head", f"{name}.yaml")))
    assert set(cfg) - {"name"} <= head_options(name), f"conf/head/{name}.yaml has keys {name} does not take"
    other = "cc" if name == "fcn" else "fcn"
    foreign = dict(yaml.safe_load(open(os.path.join(REPO, "conf", "head", f"{other}.yaml"))), name=name)
    if set(foreign) - {"name"} <= head_options(name):
        return  # every key of the other head's file is also an option of this one
    with pytest.raises(ValueError, match=rf"head.name='{name}' does not take head\..*head={name}, not head.name={name}"):
        build_head(foreign, [8, 16, 32, 64], 3)


def test_da_head_outputs_and_fusion():
    torch.manual_seed(0)
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


def test_se_loss_names_a_label_outside_the_classes():
    """A label value that is neither a class nor 255 gets the dataset check's message from the loss (EncNet's SE
    loss and cross-entropy alike), instead of an index error; 255 is ignored as everywhere."""
    from segattn.models import build_model

    head = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO, "conf", "head", "enc.yaml")))
    head["channels"] = 16
    torch.manual_seed(0)
    model = build_model({"depth": 18, "output_stride": 8, "width": 8}, head, num_classes=4).train()
    assert "se" in model.head.presence_keys
    outputs = model(torch.randn(2, 3, 32, 32))
    target = torch.randint(0, 4, (2, 32, 32))
    target[0, :4] = 255
    total, parts = model.loss(outputs, target)
    assert torch.isfinite(total) and "se" in parts
    target[1, 5, 5] = 7
    with pytest.raises(ValueError, match=r"invalid label value\(s\) \[7\] for 4 classes \(valid: 0-3, 255\)"):
        model.loss(outputs, target)
