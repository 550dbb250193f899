"""Kernels and argument checks the library shares: the fused attention every matrix-product mechanism
runs, the one attention row the pictures compute, and the validators of constructor arguments and
config values (so that every bad value gets the same kind of one-line error naming its key).
"""

from __future__ import annotations

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
    values -> (N, L, e), through ``F.scaled_dot_product_attention`` without ever holding L x L'.

    PyTorch's flash kernels (CPU, in float32 and float64, with or without grad; CUDA) need query,
    key and value of one width and no mask, else it falls back to the math path that writes the
    whole map. So the widths are matched exactly, without changing the function: a value wider than
    the keys (DANet: 512 against 64) is cut into e / d heads of width d that share the query and
    key; a narrower one (non-local ``gaussian``: keys are the C input channels) is padded with
    zero channels, which contribute zero, and the padding is cut from the output.
    """
    n, length, d = query.shape
    e = value.shape[-1]
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
