"""Every registered mechanism, tested by default: contract, taxonomy, gradients, and as a head."""

import math
import os

import pytest
import yaml
import torch
from omegaconf import OmegaConf

from segattn.models.attention import ATTENTIONS, TAXONOMY_WORDS, build_attention, register
from segattn.models.heads import build_head, head_names, head_options

from conftest import REPO

NAMES = sorted(ATTENTIONS)
C = 64  # divisible by SGE's 64 groups, >= 16 for reductions


def test_the_surveys_mechanisms_are_registered():
    surveyed = {"nl", "mhsa", "se", "cbam", "gc", "sk", "psa", "da", "oc", "cc", "ema", "sa", "eca", "sge"}
    assert surveyed <= set(ATTENTIONS), surveyed - set(ATTENTIONS)


@pytest.mark.parametrize("name", NAMES)
def test_taxonomy_and_paper(name):
    cls = ATTENTIONS[name]
    assert set(cls.taxonomy) == {"weights", "applied", "domain"}
    for key, words in TAXONOMY_WORDS.items():
        assert set(cls.taxonomy[key].split("+")) <= words
    assert cls.paper.endswith(")") and "(" in cls.paper
    year = int(cls.paper.rsplit("(", 1)[1].rstrip(")"))
    assert 2014 <= year <= 2021
    # Every mechanism names the code it is checked against (the README's "reference" column).
    assert isinstance(cls.reference, str) and len(cls.reference) > 10


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (16, 16)])
def test_shape_and_gradient(name, hw):
    torch.manual_seed(0)
    m = build_attention(name, C)
    x = torch.randn(2, C, *hw, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        assert m(x).shape == x.shape


@pytest.mark.parametrize("name", NAMES)
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


def test_registry_rejects_bad_taxonomy_and_duplicates():
    with pytest.raises(ValueError, match="taxonomy"):
        @register("_bad_words")
        class Bad(torch.nn.Module):
            taxonomy = dict(weights="magic", applied="matmul", domain="spatial")
            paper = "x (2020)"
    with pytest.raises(ValueError, match="twice"):
        @register("cc")
        class Dup(torch.nn.Module):
            taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
            paper = "x (2020)"
    with pytest.raises(KeyError, match="choices"):
        build_attention("nonexistent", 8)


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


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one_odd_size_is_finite(name):
    torch.manual_seed(0)
    m = build_attention(name, C).eval()
    with torch.no_grad():
        for hw in [(1, 1), (3, 5), (9, 4)]:
            y = m(torch.randn(1, C, *hw))
            assert y.shape == (1, C, *hw) and torch.isfinite(y).all()


def _saved_bytes(module, x):
    """Bytes of the tensors autograd keeps for backward: the activation memory of a training step."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum()
    return total


def test_criss_cross_memory_is_far_below_non_local_at_97x97():
    """CCNet's claim: the criss-cross map is HW x (H+W-1), the non-local one HW x HW."""
    x = torch.randn(1, 64, 97, 97, requires_grad=True)
    cc = _saved_bytes(build_attention("cc", 64, recurrence=2), x)
    # The non-local block as the paper computes it (its fused default keeps no HW x HW map either).
    nl = _saved_bytes(build_attention("nl", 64, impl="explicit"), x)
    ratio = nl / cc
    print(f"saved activations at 97x97, C=64: nl {nl / 2**20:.1f} MiB, cc {cc / 2**20:.1f} MiB, ratio {ratio:.1f}")
    assert ratio > 5


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
