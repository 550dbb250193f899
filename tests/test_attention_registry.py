"""Every registered mechanism, tested by default: contract, taxonomy, gradients (as a head: test_heads.py)."""

import pytest
import torch

from segattn.models.attention import ATTENTIONS, TAXONOMY_WORDS, build_attention, register

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

