"""Every registered mechanism, tested by default: contract, taxonomy, gradients, and as a head."""

import os

import pytest
import torch
from omegaconf import OmegaConf

from segattn.models.attention import ATTENTIONS, TAXONOMY_WORDS, build_attention, register
from segattn.models.heads import build_head

from conftest import REPO

NAMES = sorted(ATTENTIONS)
C = 64  # divisible by SGE's 64 groups, >= 16 for reductions


def test_the_seed_mechanisms_are_registered():
    seed = {"nl", "mhsa", "se", "cbam", "gc", "sk", "psa", "da", "oc", "cc", "ema", "sa", "eca", "sge"}
    assert seed <= set(ATTENTIONS), seed - set(ATTENTIONS)


@pytest.mark.parametrize("name", NAMES)
def test_taxonomy_and_paper(name):
    cls = ATTENTIONS[name]
    assert set(cls.taxonomy) == {"weights", "applied", "domain"}
    for key, words in TAXONOMY_WORDS.items():
        assert set(cls.taxonomy[key].split("+")) <= words
    assert cls.paper.endswith(")") and "(" in cls.paper
    year = int(cls.paper.rsplit("(", 1)[1].rstrip(")"))
    assert 2014 <= year <= 2021


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
