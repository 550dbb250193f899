"""Recording what the attention modules attend to, for pictures (the papers' figures).

Every mechanism inherits ``Recorder``. Outside ``record_attention`` a module only checks one
boolean in its forward, so training and inference run exactly as before; inside, each module keeps
the weights its forward computed (detached) in ``module.recorded``. Reading them back:

    with torch.no_grad(), record_attention(model):
        model(image)
    for name, m in attention_modules(model):   # e.g. "head.attention", a DualAttention
        if has_spatial(m):
            attention_for(m, y, x)       # (H, W): where position (y, x) of m's input gathers from
        if has_gates(m):
            gates(m)                     # (N, C): channel gates in (0, 1)

Positions are on the module's own input grid (``module.recorded["size"]``); ``grid_point`` maps
an image pixel there. A module answers through up to four methods, each returning a dict whose
first entry is the main picture:

- ``attention_maps(y, x, index)`` -> {part: (H, W)}: per-query attention (non-local family, CC,
  DANet's position branch, OC, PSA, EMA's low-rank map);
- ``spatial_maps(index)`` -> {part: (H, W)}: one weight per position shared by all queries
  (GC's pooling weights, CBAM's spatial gate, SGE's group gates, SA's attention branch);
- ``gate_values()`` -> {part: (N, C)}: channel gates (SE, ECA, SK's branch weights, CBAM);
- EMA also has ``responsibilities(index)`` (K, H, W), DANet's CAM ``channel_matrix(index)`` (C, C).

No recording holds an (HW x HW) map. The matrix-product mechanisms (non-local, DANet's position
branch, OC, MHSA) compute their attention with ``segattn.ops.fused_attention`` (PyTorch's flash or
memory-efficient kernel, which never writes the map either), so what they record is the queries
and keys (C' x HW each, as small as a feature map) and ``attention_maps(y, x)`` computes the one
row of position (y, x) on demand with ``segattn.ops.attention_row``: the same softmax, for the pixels asked
about. CC records its criss-cross weights ((H + W) x HW per pass); the others record gates or
maps of one feature map's size. Records stay until ``clear_records`` or the next recording.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import MappingProxyType

import torch
import torch.nn as nn

from .registry import ATTENTIONS


class Recorder:
    """Mixin for attention modules. ``recording`` is switched on by ``record_attention``; forward
    then calls ``self.record(...)``. Both class-level defaults are immutable, so a module that was
    never recorded has an empty ``recorded`` and cannot be written to by mistake."""

    recording: bool = False
    recorded = MappingProxyType({})

    def record(self, **values) -> None:
        self.recorded.update({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()})


class GatedChannels(Recorder):
    """Mixin for the channel gates (SE, ECA, CBAM's channel part): ``x * self.gate(x)`` with a gate
    of shape (N, C, 1, 1) in (0, 1), recorded when asked. A subclass defines only ``gate``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate(x)
        if self.recording:
            self.record(gate=gate.flatten(1))
        return x * gate

    def gate_values(self) -> dict[str, torch.Tensor]:
        return {"channel": self.recorded["gate"]}


@contextmanager
def record_attention(model: nn.Module):
    """Within the block, every attention module of ``model`` (or ``model`` itself) records its
    weights at each forward; what the last forward recorded stays readable after the block."""
    modules = [m for m in model.modules() if isinstance(m, Recorder)]
    for m in modules:
        m.recorded = {}
        m.recording = True
    try:
        yield model
    finally:
        for m in modules:
            # Back to the class default (False): no per-instance attribute left behind.
            m.__dict__.pop("recording", None)


def clear_records(model: nn.Module) -> None:
    """Drop what ``model``'s modules recorded (an HW x HW map can be large)."""
    for m in model.modules():
        if isinstance(m, Recorder):
            m.__dict__.pop("recorded", None)


def recorded_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every module that recorded something, in model order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Recorder) and len(m.recorded)]


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every registered mechanism in ``model`` that recorded something
    (itself or its parts, e.g. DANet's two branches): the units a picture is made for."""
    mechanisms = tuple(ATTENTIONS.values())
    return [(name, m) for name, m in model.named_modules() if isinstance(m, mechanisms) and _recorded_anything(m)]


def has_spatial(module: nn.Module) -> bool:
    return hasattr(module, "attention_maps") or hasattr(module, "spatial_maps")


def is_query_dependent(module: nn.Module) -> bool:
    """True when each position has a map of its own (``attention_for`` depends on (y, x))."""
    return hasattr(module, "attention_maps")


def has_gates(module: nn.Module) -> bool:
    """True when the module recorded channel gates (a GC block with ``channel_add`` alone has none)."""
    return hasattr(module, "gate_values") and _recorded_anything(module) and len(module.gate_values()) > 0


def _not_recorded(module: nn.Module) -> RuntimeError:
    return RuntimeError(
        f"{type(module).__name__} has recorded nothing: run its forward inside "
        f"`with record_attention(model):` before reading its attention"
    )


def attention_maps(module: nn.Module, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
    """All maps of ``module`` for position (y, x) of image ``index``, {part: (H, W)} on its input grid."""
    if not has_spatial(module):
        raise TypeError(f"{type(module).__name__} has no spatial attention (channel gates: use gates())")
    if not _recorded_anything(module):
        raise _not_recorded(module)
    if hasattr(module, "attention_maps"):
        h, w = module_size(module)
        if not (0 <= y < h and 0 <= x < w):
            raise IndexError(f"{type(module).__name__}: position ({y}, {x}) is outside its {h}x{w} input grid")
        return module.attention_maps(int(y), int(x), int(index))
    return module.spatial_maps(int(index))


def attention_for(module: nn.Module, y: int, x: int, index: int = 0, part: str | None = None) -> torch.Tensor:
    """The (H, W) attention of position (y, x) (input grid of ``module``) over the positions of its
    input: the main map, or ``part`` (see the module's ``attention_maps``). Query-independent
    mechanisms (GC, CBAM, SGE, SA) return their one map whatever (y, x)."""
    maps = attention_maps(module, y, x, index)
    if part is None:
        return next(iter(maps.values()))
    if part not in maps:
        raise KeyError(f"{type(module).__name__}: no attention part {part!r}; choices: {', '.join(maps)}")
    return maps[part]


def gates(module: nn.Module, part: str | None = None) -> torch.Tensor:
    """The (N, C) channel gates of the last recorded forward (the main ones, or ``part``)."""
    if not has_gates(module):
        raise TypeError(f"{type(module).__name__} has no channel gates")
    if not _recorded_anything(module):
        raise _not_recorded(module)
    values = module.gate_values()
    if part is None:
        return next(iter(values.values()))
    if part not in values:
        raise KeyError(f"{type(module).__name__}: no gate part {part!r}; choices: {', '.join(values)}")
    return values[part]


def responsibilities(module: nn.Module, index: int = 0) -> torch.Tensor:
    """EMA's (K, H, W) responsibilities: how much each position belongs to each base."""
    if not hasattr(module, "responsibilities"):
        raise TypeError(f"{type(module).__name__} has no bases (only EMA has)")
    if not _recorded_anything(module):
        raise _not_recorded(module)
    return module.responsibilities(int(index))


def module_size(module: nn.Module) -> tuple[int, int]:
    """(H, W) of the input the module recorded (composite modules ask their recording part)."""
    for m in module.modules():
        if isinstance(m, Recorder) and "size" in m.recorded:
            return tuple(m.recorded["size"])
    raise _not_recorded(module)


def _recorded_anything(module: nn.Module) -> bool:
    return any(isinstance(m, Recorder) and len(m.recorded) for m in module.modules())


def grid_point(y: int, x: int, image_size: tuple[int, int], grid_size: tuple[int, int]) -> tuple[int, int]:
    """Image pixel (y, x) -> the cell of a (h, w) feature grid covering it (features are strided
    samples of the image, cell i covering image rows [i * H / h, (i + 1) * H / h))."""
    (ih, iw), (h, w) = image_size, grid_size
    return min(h - 1, int(y) * h // ih), min(w - 1, int(x) * w // iw)


def spread(coarse: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Map a (h', w') weight map to a finer (H, W) grid, ``rows[i]`` / ``cols[j]`` naming the
    coarse cell of fine row i / column j. Each cell's weight is shared equally among the fine
    positions it covers, so a distribution stays one (its total is unchanged)."""
    rows, cols = rows.to(coarse.device), cols.to(coarse.device)
    count_r = torch.bincount(rows, minlength=coarse.shape[0]).clamp(min=1).to(coarse.dtype)
    count_c = torch.bincount(cols, minlength=coarse.shape[1]).clamp(min=1).to(coarse.dtype)
    share = coarse / count_r[:, None] / count_c[None, :]
    return share[rows][:, cols]


def window_index(size: int, coarse: int, stride: int) -> torch.Tensor:
    """Fine position i -> the pooling window i // stride that holds it (clamped to the last one)."""
    return (torch.arange(size) // stride).clamp(max=coarse - 1)
