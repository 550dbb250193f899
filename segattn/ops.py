"""Kernels and argument checks the library shares: the fused attention every matrix-product mechanism
runs, the one attention row the pictures compute, and the validators of constructor arguments and
config values (so that every bad value gets the same kind of one-line error naming its key).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

IMPLS = ("fused", "explicit")


def check_impl(name: str, impl: str) -> str:
    """``impl`` of the matrix-product mechanisms: ``fused`` (the default: no HW x HW tensor, in
    training or inference) or ``explicit`` (the map as the papers write it: the reference)."""
    if impl not in IMPLS:
        raise ValueError(f"{name}: impl must be one of {IMPLS}, got {impl!r}")
    return impl


def fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(query key^T * scale) value for (N, L, d) queries, (N, L', d) keys and (N, L', e)
    values -> (N, L, e), without ever holding L x L'.

    - A value wider than the keys (DANet: 512 against 64; OCNet: 512 against 256) runs the blocked
      kernel below, which computes each affinity once per query block and applies it to the whole
      value: PyTorch's flash kernels need query, key and value of one width, and cutting the value
      into e / d heads to fit them recomputes the same L x L' logits e / d times (DANet's module:
      1.7x the matrix-product FLOPs of its explicit form).
    - Otherwise ``F.scaled_dot_product_attention`` (flash kernels on the CPU, in float32 and float64,
      with or without grad; CUDA). A narrower value (non-local ``gaussian``: keys are the C input
      channels) is padded with zero channels, which contribute zero, and the padding is cut off.
    - While tracing or exporting, also for a wider value: the blocked kernel's loop runs over the
      number of positions, which a traced or exported graph would fix to the example's size.
    """
    n, length, d = query.shape
    e = value.shape[-1]
    if e > d and not _tracing():
        return wide_value_attention(query, key, value, scale)
    heads = -(-e // d)  # ceil(e / d) heads of width d (one when e <= d), zero channels to fill
    if heads * d != e:
        value = F.pad(value, (0, heads * d - e))
    v = value.view(n, -1, heads, d).transpose(1, 2)
    q = query.unsqueeze(1).expand(n, heads, length, d)
    k = key.unsqueeze(1).expand(n, heads, key.shape[1], d)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    # Looked up at call time, so that the benchmarks' meta-device emulation can stand in for it.
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (N, heads, L, d)
    out = out.transpose(1, 2).reshape(n, length, heads * d)
    return out if heads * d == e else out[..., :e]


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


# Logits per block of the blocked kernel: its B x L' block is the only map it holds (2^22 elements,
# 16 MiB in float32, whatever L'): large enough for the matrix products to run at full speed, small
# enough to stay in cache between the product that makes it, the softmax and the product that
# applies it (measured at 97x97: 445-row blocks are faster than one whole-map product). At least
# 256 rows: the CPU's matrix products slow down several times on thinner blocks (27 rows: 10x).
_BLOCK_ELEMENTS = 1 << 22
_MIN_ROWS = 256


def _query_blocks(length: int, keys: int) -> list[slice]:
    step = max(1, min(length, max(_MIN_ROWS, _BLOCK_ELEMENTS // max(1, keys))))
    return [slice(i, min(i + step, length)) for i in range(0, length, step)]


def _block_weights(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) of one query block, (N, B, L'), in float32 for half-precision inputs.
    (Through the softmax kernel, not exp(s - logsumexp): ``exp`` of the very negative logits of a
    peaked row is over ten times slower on the CPU.)"""
    s = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
    return s.softmax(dim=-1, dtype=torch.float32) if s.dtype in (torch.float16, torch.bfloat16) else s.softmax(dim=-1)


def _wide_forward(q, k, v, scale):
    n, length, _ = q.shape
    out = v.new_empty(n, length, v.shape[-1])
    for sl in _query_blocks(length, k.shape[1]):
        out[:, sl] = torch.bmm(_block_weights(q[:, sl], k, scale).to(v.dtype), v)
    return out


class _WideValueAttention(torch.autograd.Function):
    """Attention with a value wider than its keys that saves only its inputs and its output, and
    recomputes each query block's weights in backward (as flash attention's backward does): one
    more q k^T product, instead of an L x L' map kept from forward."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        out = _wide_forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out = ctx.saved_tensors
        scale, g = ctx.scale, grad.to(v.dtype)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        # Softmax backward, dS = P * (dP - rowsum(dP * P)), where rowsum(dP * P) = rowsum(dO * O).
        delta = (g * out).sum(dim=-1, keepdim=True, dtype=torch.promote_types(v.dtype, torch.float32))
        for sl in _query_blocks(q.shape[1], k.shape[1]):
            p = _block_weights(q[:, sl], k, scale)
            dv.baddbmm_(p.to(v.dtype).transpose(1, 2), g[:, sl])
            ds = torch.bmm(g[:, sl], v.transpose(1, 2)).to(p.dtype).sub_(delta[:, sl]).mul_(p).to(q.dtype)
            dq[:, sl] = torch.bmm(ds, k).mul_(scale)
            dk.baddbmm_(ds.transpose(1, 2), q[:, sl], alpha=scale)
        return dq, dk, dv, None


def wide_value_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(query key^T * scale) value a block of queries at a time: each affinity computed once
    and applied to the whole (wider) value; no L x L' map in forward or backward. Under autocast the
    inputs are cast as ``F.scaled_dot_product_attention`` would be, and the kernel runs in that dtype."""
    device = query.device.type
    autocast = torch.amp.is_autocast_available(device)  # (not on the meta device the estimates run on)
    if autocast and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    query, key, value = (t.to(dtype) for t in (query, key, value))
    with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
        if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
            return _WideValueAttention.apply(query, key, value, scale)
        return _wide_forward(query, key, value, scale)


def attention_row(query: torch.Tensor, key: torch.Tensor, position: int, scale: float,
                  normalise: str = "softmax") -> torch.Tensor:
    """Row ``position`` of softmax(query key^T * scale) for one image: (L, d) queries, (L', d) keys
    -> (L',) weights, in float32 at least (what ``attention_maps`` shows). ``normalise="mean"``
    divides the logits by L' instead (non-local ``dot_product``)."""
    dtype = torch.promote_types(query.dtype, torch.float32)
    logits = key.to(dtype) @ query[position].to(dtype)
    if normalise == "mean":
        return logits / key.shape[0]
    return (logits * scale).softmax(dim=0)


# ----------------------------------------------------------------------------- argument checks


def _is_positive_int(value) -> bool:
    try:
        return not isinstance(value, bool) and int(value) == value and value >= 1
    except (TypeError, ValueError):
        return False


def positive_int(value, what: str, *, odd: bool = False, null: bool = False, divides: int | None = None,
                 hint: str = "") -> int | None:
    """``value`` as an ``int`` when it is a positive integer (odd, with ``odd``; a divisor of
    ``divides``; None passes with ``null``), else ValueError "``what`` must be a positive integer...,
    got ...". ``what`` names the module and the key, e.g. ``"cc: recurrence"``; ``hint`` is added
    to the expectation, e.g. ``" (paper: 7)"``."""
    if value is None and null:
        return None
    ok = _is_positive_int(value) and not (odd and value % 2 == 0) and not (divides and divides % int(value))
    if not ok:
        kind = "an odd positive integer" if odd else "a positive integer"
        dividing = f" dividing {divides}" if divides else ""
        raise ValueError(f"{what} must be {kind}{dividing}{' or null' if null else ''}{hint}, got {value!r}")
    return int(value)


def positive_ints(values, what: str, *, length: int | None = None, hint: str = "") -> tuple[int, ...]:
    """A list of positive integers as a tuple (a single number stands for a list of one, or for
    ``length`` equal entries); a non-empty one, of exactly ``length`` entries if given."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values] * (length or 1)
    ok = (isinstance(values, Sequence) and not isinstance(values, str) and len(values) > 0
          and (length is None or len(values) == length) and all(map(_is_positive_int, values)))
    if not ok:
        count = "a non-empty list of" if length is None else {2: "two"}.get(length, str(length))
        raise ValueError(f"{what} must be {count} positive integers{hint}, got {values!r}")
    return tuple(int(v) for v in values)


def size_hw(value, key: str) -> tuple[int, int]:
    """A config size ``[H, W]`` (or one number for both) as two positive ints, else ValueError
    "``key``=value: expected [H, W] of positive integers"."""
    try:
        h, w = (int(value), int(value)) if isinstance(value, (numbers.Real, str)) else (int(value[0]), int(value[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{key}={value!r}: expected [H, W] of positive integers") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{key}={value!r}: expected [H, W] of positive integers")
    return h, w
