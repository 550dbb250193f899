"""impl=fused computes the same function as impl=explicit (outputs, gradients, recorded maps) and
never holds an HW x HW tensor, in training or inference, recording included; the criss-cross
autograd function's backward is the gradient of its forward (gradcheck)."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import segattn.models.attention.cc as cc_module
from segattn import ops
from segattn.models.attention import build_attention
from segattn.models.attention.mhsa import sinusoidal_encoding_2d
from segattn.models.attention.record import attention_maps, record_attention
from segattn.models.heads import build_head

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
CASES = [
    ("nl", {}),
    ("nl", dict(use_scale=False)),
    ("nl", dict(mode="gaussian")),
    ("nl", dict(mode="dot_product")),
    ("nl", dict(sub_sample=True)),
    ("da", {}),
    ("oc", {}),
    ("oc_pyramid", dict(sizes=[1, 2, 3])),
    ("oc_asp", dict(dilations=[1, 2])),
    ("mhsa", dict(num_heads=4)),
    ("cc", {}),
    ("cc", dict(recurrence=1)),
    ("dnl", {}),
    ("dnl", dict(mode="dot_product")),
    ("isa", dict(down_factor=[2, 3])),
]
SIZES = [(5, 7), (7, 4), (3, 3), (1, 6)]


def _pair(name, kw, channels=16):
    """The same random weights in an explicit and a fused module (float64, eval: no dropout)."""
    torch.manual_seed(0)
    explicit = build_attention(name, channels, impl="explicit", **kw).double().eval()
    with torch.no_grad():
        for p in explicit.parameters():
            p.copy_(torch.randn_like(p) * 0.3)  # non-zero gammas and output convs: the attention matters
    fused = build_attention(name, channels, impl="fused", **kw).double().eval()
    fused.load_state_dict(explicit.state_dict())
    return explicit, fused


def _run(m, x, grad_out, record):
    x = x.clone().requires_grad_(True)
    for p in m.parameters():
        p.grad = None
    if record:
        with record_attention(m):
            y = m(x)
    else:
        y = m(x)
    y.backward(grad_out)
    return y.detach(), x.grad, [p.grad for p in m.parameters()]


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()) + 1e-12, msg=what)


@pytest.mark.parametrize("record", [False, True])
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}" for n, k in CASES])
def test_fused_equals_explicit_outputs_and_gradients(name, kw, record):
    explicit, fused = _pair(name, kw)
    for h, w in SIZES:
        if kw.get("sub_sample") and min(h, w) < 2:
            continue
        x = torch.randn(2, 16, h, w, dtype=torch.float64)
        g = torch.randn(2, 16, h, w, dtype=torch.float64)
        ye, dxe, dpe = _run(explicit, x, g, record)
        yf, dxf, dpf = _run(fused, x, g, record)
        _close(yf, ye, f"{name} {kw} {h}x{w} output")
        _close(dxf, dxe, f"{name} {kw} {h}x{w} input gradient")
        for (pname, _), a, b in zip(fused.named_parameters(), dpf, dpe):
            if b is None:
                assert a is None or not a.any(), pname
                continue
            _close(a, b, f"{name} {kw} {h}x{w} gradient of {pname}")
        if record:
            for y, xx in ((0, 0), (h - 1, w - 1), (h // 2, w // 3)):
                me, mf = attention_maps(explicit, y, xx), attention_maps(fused, y, xx)
                assert list(me) == list(mf)
                for part in me:
                    _close(mf[part], me[part], f"{name} {kw} {h}x{w} map {part} at ({y}, {xx})")


def _full_map(name, m, x):
    """The module's whole (HW x HW') attention, computed explicitly (the maps the pictures show rows of)."""
    if name == "nl":
        return m.pairwise(x)[0]
    if name == "da":
        return m.pam.attention(x)[0]
    if name == "oc":
        k = m.attention.f_key(x).flatten(2)[0]
        return (k.t() @ k * m.attention.key_channels**-0.5).softmax(dim=-1)
    tokens = (x + sinusoidal_encoding_2d(x.shape[1], *x.shape[2:]).to(x.dtype)).flatten(2).transpose(1, 2)
    n, length, c = tokens.shape
    q = m.query(tokens).view(n, length, m.num_heads, -1).transpose(1, 2)
    k = m.key(tokens).view(n, length, m.num_heads, -1).transpose(1, 2)
    return (q @ k.transpose(-2, -1) * m.head_dim**-0.5).softmax(dim=-1)[0].mean(0)


@pytest.mark.parametrize("name", ["nl", "da", "oc", "mhsa"])
def test_recorded_rows_are_rows_of_the_explicit_map(name):
    kw = dict(num_heads=4) if name == "mhsa" else {}
    _, fused = _pair(name, kw)
    x = torch.randn(1, 16, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        with record_attention(fused):
            fused(x)
        full = _full_map(name, fused, x)
    for y, xx in ((0, 0), (4, 6), (2, 3)):
        row = next(iter(attention_maps(fused, y, xx).values()))
        _close(row, full[y * 7 + xx].view(5, 7), f"{name} ({y}, {xx})")


class _LargestPairs(TorchDispatchMode):
    """Records every tensor an op returns that has two or more dimensions of at least ``limit``:
    an attention map over ``limit`` or more positions (the test's feature maps have no such sides)."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.found = limit, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and sum(s >= self.limit for s in t.shape) >= 2:
                self.found.append((str(func), tuple(t.shape)))
        return out


FUSED_NAMES = [("nl", {}), ("nl", dict(mode="gaussian")), ("nl", dict(mode="dot_product")),
               ("nl", dict(sub_sample=True)), ("da", {}), ("oc", {}), ("oc_pyramid", dict(sizes=[1, 2])),
               ("oc_asp", dict(dilations=[1, 2])), ("mhsa", dict(num_heads=4)), ("cc", {}),
               ("dnl", {}), ("isa", dict(down_factor=[4, 5]))]


@pytest.mark.parametrize("name,kw", FUSED_NAMES, ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}"
                                                      for n, k in FUSED_NAMES])
def test_no_hw_by_hw_tensor_in_training_inference_or_recording(name, kw, monkeypatch):
    # The blocked kernel of values wider than keys holds one block of query rows at a time (up to
    # ``_BLOCK_ELEMENTS`` weights; its own test checks that at a large size): here 5 to 22 rows.
    monkeypatch.setattr(ops, "_BLOCK_ELEMENTS", 4000)
    monkeypatch.setattr(ops, "_MIN_ROWS", 1)
    # 24 x 30 features: 720 positions (180 in oc_asp's pooled map and in oc_pyramid's 2x2 regions);
    # every legitimate tensor has at most one dimension of 100 or more (channels 16, FFN 64, H + W 54).
    torch.manual_seed(0)
    m = build_attention(name, 16, **kw).train()
    x = torch.randn(2, 16, 24, 30, requires_grad=True)
    with _LargestPairs(100) as seen:
        m(x).sum().backward()
        m.eval()
        with torch.no_grad(), record_attention(m):
            m(x)
        attention_maps(m, 3, 4)
    assert not seen.found, seen.found[:3]
    # The detector does see the explicit form's map.
    explicit = build_attention(name, 16, impl="explicit", **kw).eval()
    with _LargestPairs(100) as seen, torch.no_grad():
        explicit(x)
    # cc's pure-PyTorch form has none either; isa's explicit maps are per group (36 and 20 positions here)
    assert bool(seen.found) == (name not in ("cc", "isa"))


def test_criss_cross_pass_gradcheck(monkeypatch):
    monkeypatch.setattr(cc_module, "_SLICE", 3)  # several value slices, the last one short
    torch.manual_seed(0)
    m = build_attention("cc", 8).double()
    weights = [torch.randn_like(t).requires_grad_(True) for t in
               (m.query_conv.weight, m.query_conv.bias, m.key_conv.weight, m.key_conv.bias,
                m.value_conv.weight, m.value_conv.bias)]
    gamma = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 8, 3, 5, dtype=torch.float64, requires_grad=True)  # small: gradcheck is O(inputs) passes
    assert torch.autograd.gradcheck(cc_module.CrissCrossPass.apply, (x, *weights, gamma))


def test_cc_fused_pass_saves_only_its_input():
    m = build_attention("cc", 16)
    x = torch.randn(1, 16, 6, 9, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        m.step(x)
    # The input and the weights: no (H, W, H + W) affinities, no value or aggregation maps.
    assert saved.count((1, 16, 6, 9)) == 1, saved
    assert {s for s in saved if len(s) == 4} <= {(1, 16, 6, 9), (2, 16, 1, 1), (16, 16, 1, 1)}, saved


@pytest.mark.parametrize("name", ["nl", "da", "oc", "oc_pyramid", "oc_asp", "mhsa", "cc", "dnl", "isa"])
def test_impl_is_a_head_option_and_checked(name):
    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(CONF, "head", f"{name}.yaml")))
    assert cfg["impl"] == "fused"
    head = build_head({**cfg, "channels": 16, "impl": "explicit"}, [8, 8, 8, 32], 3)
    impls = {m.impl for m in head.modules() if hasattr(m, "impl")}
    assert impls == {"explicit"}
    with pytest.raises(ValueError, match="impl must be one of"):
        build_attention(name, 16, impl="flash")


# ----------------------------------------------------------------------------- values wider than keys
# DANet's PAM (value 512, keys 64), Pyramid- and ASP-OC (value C, keys C/2): segattn.ops runs them
# through a blocked kernel that computes each query block's weights once for the whole value.


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few query rows, so that small inputs go through several blocks (the last one short)."""
    monkeypatch.setattr(ops, "_BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(ops, "_MIN_ROWS", 1)


def _explicit_attention(q, k, v, scale):
    return (q @ k.transpose(1, 2) * scale).softmax(dim=-1) @ v


@pytest.mark.parametrize("keys,blocks", [(11, 2), (1, 1), (20, 3)])
def test_wide_value_kernel_is_softmax_attention_and_its_gradient(small_blocks, keys, blocks):
    torch.manual_seed(0)
    q = torch.randn(1, 9, 3, dtype=torch.float64, requires_grad=True)  # few inputs: gradcheck is O(inputs)
    k = torch.randn(1, keys, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, keys, 5, dtype=torch.float64, requires_grad=True)
    assert len(ops._query_blocks(9, keys)) == blocks  # 64 weights a block: 5 rows of 11 keys, 3 of 20
    out = ops.fused_attention(q, k, v, 0.7)
    _close(out.detach(), _explicit_attention(q, k, v, 0.7).detach(), "wide value output")
    assert out.grad_fn is not None and "WideValue" in type(out.grad_fn).__name__  # the blocked kernel ran
    assert torch.autograd.gradcheck(lambda a, b, c: ops.wide_value_attention(a, b, c, 0.7), (q, k, v))
    with torch.no_grad():  # inference: the same blocks, no autograd node
        _close(ops.fused_attention(q, k, v, 0.7), _explicit_attention(q, k, v, 0.7), "no_grad output")


def test_wide_value_kernel_computes_each_affinity_once():
    """At DANet's paper setting (97 x 97 positions, keys 64, value 512), counted on the meta device as
    benchmarks/ counts: the forward's matrix-product FLOPs are exactly the explicit form's (q k^T once,
    then the weights times the value), and forward + backward add only the backward's recomputation of
    q k^T, 3.7 % (value cut into 8 heads for the flash kernel: 1.7x)."""
    from benchmarks.common import count_flops

    length, d, e = 97 * 97, 64, 512

    def run(kind, backward):
        q, k, v = (torch.empty(1, length, c, device="meta", requires_grad=True) for c in (d, d, e))
        out = ops.fused_attention(q, k, v, 1.0) if kind == "fused" else _explicit_attention(q, k, v, 1.0)
        if backward:
            out.sum().backward()

    qk = 2 * length * length * d
    explicit_fwd = qk + 2 * length * length * e
    assert count_flops(lambda: run("explicit", False)).matmul == explicit_fwd
    assert count_flops(lambda: run("fused", False)).matmul == explicit_fwd
    explicit_train = count_flops(lambda: run("explicit", True)).matmul
    assert count_flops(lambda: run("fused", True)).matmul == explicit_train + qk
    assert (explicit_train + qk) / explicit_train <= 1.05


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_wide_value_kernel_holds_one_block_of_weights_at_a_time():
    """On 128 x 128 positions (16,384 keys: the whole map is 268 M weights) neither forward nor backward
    makes a tensor larger than one block of ``_BLOCK_ELEMENTS`` weights (counted on the meta device)."""
    length = 128 * 128
    q, k, v = (torch.empty(1, length, c, device="meta", requires_grad=True) for c in (32, 32, 256))
    with _LargestTensor() as seen:
        ops.fused_attention(q, k, v, 1.0).sum().backward()
    assert length * 256 <= seen.largest <= ops._BLOCK_ELEMENTS, seen.largest


def test_wide_value_kernel_under_autocast_matches_float32():
    """Under CPU autocast (bfloat16) the kernel runs in bfloat16 with float32 softmax, as
    ``F.scaled_dot_product_attention`` would, and its gradients come back in the inputs' dtype."""
    torch.manual_seed(0)
    q, k = (torch.randn(1, 300, 8, requires_grad=True) for _ in range(2))
    v = torch.randn(1, 300, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.fused_attention(q, k, v, 8**-0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _explicit_attention(q, k, v, 8**-0.5), atol=3e-2, rtol=3e-2)
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and v.grad.dtype == torch.float32 and bool(q.grad.abs().sum() > 0)


def test_export_traces_the_flash_form():
    """Traced or exported graphs take the head-split flash form (its loop does not depend on the
    number of positions), with the same outputs."""
    torch.manual_seed(0)
    m = build_attention("da", 16).eval()
    with torch.no_grad():
        m.pam.gamma.fill_(0.5)
    x, x2 = torch.randn(1, 16, 6, 7), torch.randn(1, 16, 9, 5)
    traced = torch.jit.trace(m, (x,), check_trace=False)
    for inp in (x, x2):
        torch.testing.assert_close(traced(inp), m(inp), atol=1e-5, rtol=1e-5)
