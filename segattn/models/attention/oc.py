"""Object context (Yuan & Wang, "OCNet: Object Context Network for Scene Parsing", 2018).

Three registered modules, after the official ``oc_module/`` code (openseg-group/OCNet.pytorch):
``oc`` (``BaseOC_Module``), ``oc_pyramid`` (``Pyramid_OC_Module``) and ``oc_asp``
(``ASP_OC_Module``). All map C -> C. ``segattn.models.heads.oc.OCHead`` is the network's head
around them.

The official code normalises with InPlaceABNSync, whose activation is a leaky ReLU of slope 0.01
(in-place ABN needs an invertible activation). The released models were trained with it, so
every BN in the modules, the shared key/query transform's included, is followed by that leaky ReLU
(the one BN without it is Pyramid-OC's head reduction, see ``OCHead``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import attention_row, check_impl, fused_attention, positive_ints
from ..layers import conv_bn_relu
from .record import Recorder, spread, window_index
from .registry import BN_REMOVES, VALUE_CONSTANT, register


def _check_dropout(name: str, key: str, p: float) -> float:
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name}: {key} must be in [0, 1), got {p!r}")
    return float(p)


def _conv_abn(cin: int, cout: int, kernel: int = 1, dilation: int = 1, bias: bool = True) -> list[nn.Module]:
    """conv -> InPlaceABNSync (BN + leaky ReLU 0.01), as the layers of a list to splice in."""
    return list(conv_bn_relu(cin, cout, kernel, dilation, bias=bias, act="leaky"))


def _region_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """Split ``size`` rows into ``grid`` regions as the official Pyramid-OC does.

    Regions are ``size // grid`` long and the last one takes the remainder (7 rows, grid 3:
    [0, 2), [2, 4), [4, 7)). A grid finer than the map (official code: empty regions) gives one
    row per region instead.
    """
    grid = min(grid, size)
    step = size // grid
    starts = [i * step for i in range(grid)]
    return list(zip(starts, starts[1:] + [size]))


class SelfAttentionBlock(Recorder, nn.Module):
    """OCNet's ``SelfAttentionBlock2D``, or ``PyramidSelfAttentionBlock2D`` when ``grid`` > 1.

    The object context of pixel p is c_p = W sum_q softmax_q(k_p^T k_q / sqrt(d_k)) v_q: query
    and key share ONE transform f_key (conv1x1 + BN + leaky ReLU; official ``self.f_query =
    self.f_key``), the value is a plain conv1x1 and W, a conv1x1 back to ``out_channels``, starts
    at zero (official init), so the context is zero at initialisation.

    ``grid`` = s splits the map into s x s regions and each pixel attends only inside its own
    region (Pyramid-OC). ``scale`` > 1 max-pools the map by ``scale`` before the
    attention and upsamples the context back (official ``scale`` option, used by ASP-OC).
    ``impl="fused"`` runs each region's attention through ``fused_attention`` (scale
    1/sqrt(d_k)), never holding its hw x hw map; ``impl="explicit"`` computes the map as the
    official code.
    """

    # f_key's conv meets its BN; the value's and W's biases are per-channel constants that the fusion's BN
    # after the block removes (segattn/check.py).
    grad_exempt = {"f_key.0.bias": BN_REMOVES, "f_value.bias": VALUE_CONSTANT, "W.bias": BN_REMOVES}

    def __init__(
        self, in_channels: int, key_channels: int, value_channels: int, out_channels: int, grid: int = 1, scale: int = 1,
        impl: str = "fused",
    ):
        super().__init__()
        self.impl = check_impl("oc", impl)
        self.key_channels = key_channels
        self.grid = grid
        self.scale = scale
        self.f_key = nn.Sequential(*_conv_abn(in_channels, key_channels))
        self.f_value = nn.Conv2d(in_channels, value_channels, 1)
        self.W = nn.Conv2d(value_channels, out_channels, 1)
        nn.init.zeros_(self.W.weight)
        nn.init.zeros_(self.W.bias)

    def attend(self, key: torch.Tensor, value: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Self-attention inside one region: (N, Ck, h, w), (N, Cv, h, w) -> (N, Cv, h, w).

        ``origin`` is the region's top-left cell on the attention grid, kept with the keys (also
        the queries) when recording: ``attention_maps`` computes a row from them.
        """
        k = key.flatten(2).transpose(1, 2)  # (N, hw, Ck), also the query
        if self.recording:
            self.recorded.setdefault("regions", []).append((origin, tuple(key.shape[-2:]), k.detach()))
        scale = self.key_channels**-0.5
        if self.impl == "explicit":
            sim = (torch.bmm(k, k.transpose(1, 2)) * scale).softmax(dim=-1)
            return torch.bmm(value.flatten(2), sim.transpose(1, 2)).view_as(value)
        context = fused_attention(k, k, value.flatten(2).transpose(1, 2), scale)  # (N, hw, Cv)
        return context.transpose(1, 2).reshape(value.shape)

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """Position (y, x)'s attention over its region (the whole map unless Pyramid-OC).

        With ``scale`` > 1 the attention runs on the max-pooled map: (y, x) asks its pooling
        window, whose weights are shared by the input positions of each window.
        """
        h, w = self.recorded["size"]
        ah, aw = self.recorded["grid_size"]
        rows, cols = window_index(h, ah, self.scale), window_index(w, aw, self.scale)
        qy, qx = int(rows[y]), int(cols[x])
        coarse = None
        for (r0, c0), (rh, rw), k in self.recorded["regions"]:
            if r0 <= qy < r0 + rh and c0 <= qx < c0 + rw:
                row = attention_row(k[index], k[index], (qy - r0) * rw + (qx - c0), self.key_channels**-0.5)
                coarse = row.new_zeros(ah, aw)
                coarse[r0:r0 + rh, c0:c0 + rw] = row.view(rh, rw)
        return {"attention": spread(coarse, rows, cols) if self.scale > 1 else coarse}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        if self.scale > 1:
            # Floor mode as the official nn.MaxPool2d; ceil mode only where a side is shorter
            # than the window, which floor mode would pool to nothing.
            x = F.max_pool2d(x, self.scale, ceil_mode=min(h, w) < self.scale)
        if self.recording:
            self.record(size=(h, w), grid_size=tuple(x.shape[-2:]), regions=[])
        key, value = self.f_key(x), self.f_value(x)
        if self.grid == 1:
            context = self.attend(key, value)
        else:
            rows = []
            for r0, r1 in _region_bounds(x.shape[2], self.grid):
                regions = [
                    self.attend(key[:, :, r0:r1, c0:c1], value[:, :, r0:r1, c0:c1], (r0, c0))
                    for c0, c1 in _region_bounds(x.shape[3], self.grid)
                ]
                rows.append(torch.cat(regions, dim=3))
            context = torch.cat(rows, dim=2)
        context = self.W(context)
        if self.scale > 1:
            context = F.interpolate(context, size=(h, w), mode="bilinear", align_corners=True)
        return context


@register("oc")
class BaseOC(Recorder, nn.Module):
    """OCNet's ``BaseOC_Module``: object context concatenated with the input, conv1x1 -> C.

    Key and value have C/2 channels (official: 256 for the 512-channel input); the fusion is
    conv1x1 + BN + leaky ReLU + Dropout2d(``context_dropout`` = 0.05, the official default).
    """

    # Survey (Guo et al. 2022): 矩阵乘法 叉乘 空间 (pairwise key products applied as an HW x HW matrix product).
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "OCNet: Object Context Network for Scene Parsing (2018)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "openseg-group/OCNet.pytorch `BaseOC_Module` and its network head"
    deviations = "auxiliary head is mmseg's FCN on c4, not OCNet's dsn"

    grad_exempt = {"fuse.0.bias": BN_REMOVES}  # segattn/check.py

    def __init__(self, channels: int, context_dropout: float = 0.05, impl: str = "fused"):
        super().__init__()
        c = self.channels = int(channels)
        half = max(1, c // 2)
        self.attention = SelfAttentionBlock(c, half, half, c, impl=check_impl("oc", impl))
        self.fuse = nn.Sequential(
            *_conv_abn(2 * c, c), nn.Dropout2d(_check_dropout("oc", "context_dropout", context_dropout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.attention(x), x], dim=1))

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        return self.attention.attention_maps(y, x, index)


@register("oc_pyramid")
class PyramidOC(Recorder, nn.Module):
    """OCNet's ``Pyramid_OC_Module``: object context within 1x1, 2x2, 3x3 and 6x6 partitions.

    Each level is a self-attention block restricted to its regions (key C/2, value C, out C, as
    the official code). The input is lifted to C x levels channels (conv1x1 + BN + leaky ReLU,
    official ``up_dr``) so that it weighs as much as all the contexts, everything is
    concatenated and reduced back to C (conv1x1 + BN + leaky ReLU + Dropout2d(0.05)).
    """

    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "OCNet: Object Context Network for Scene Parsing (2018)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "openseg-group/OCNet.pytorch `Pyramid_OC_Module` and its network head"
    deviations = "auxiliary head is mmseg's FCN on c4; a map smaller than a grid gets one row per region (the official loop makes empty ones)"

    # Export limits (segattn.deploy): format -> why only at a fixed size; tests/test_deploy.py checks them.
    export_static_only = dict.fromkeys(("exported_program", "onnx"),
                                       "Pyramid-OC's region grid is computed from the feature size in Python")

    grad_exempt = {"up_dr.0.bias": BN_REMOVES, "fuse.0.bias": BN_REMOVES}  # segattn/check.py

    def __init__(self, channels: int, sizes: Sequence[int] = (1, 2, 3, 6), context_dropout: float = 0.05,
                 impl: str = "fused"):
        super().__init__()
        c = self.channels = int(channels)
        self.sizes = positive_ints(sizes, "oc_pyramid: sizes")
        g = len(self.sizes)
        impl = check_impl("oc_pyramid", impl)
        self.stages = nn.ModuleList(SelfAttentionBlock(c, max(1, c // 2), c, c, grid=s, impl=impl) for s in self.sizes)
        self.up_dr = nn.Sequential(*_conv_abn(c, c * g))
        self.fuse = nn.Sequential(
            *_conv_abn(2 * c * g, c), nn.Dropout2d(_check_dropout("oc_pyramid", "context_dropout", context_dropout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up_dr(x)] + [stage(x) for stage in self.stages], dim=1))

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """The mean of the levels' maps (each sums to one over its region), then each level."""
        levels = {
            f"grid{s}": stage.attention_maps(y, x, index)["attention"] for s, stage in zip(self.sizes, self.stages)
        }
        return {"mean": torch.stack(list(levels.values())).mean(dim=0), **levels}


@register("oc_asp")
class ASPOC(Recorder, nn.Module):
    """OCNet's ``ASP_OC_Module``: the object context in parallel with ASPP branches.

    Five branches of C/2 channels each (official: 256 for the 512-channel input): conv3x3 + BN
    + leaky ReLU followed by the object-context block (computed on a map max-pooled by
    ``context_scale`` = 2, official ``sizes=[2]``, then conv1x1 + BN + leaky ReLU), a conv1x1, and a
    dilated conv3x3 per entry of ``dilations`` (12, 24, 36 at output stride 8). They are
    concatenated and reduced to C by conv1x1 + BN + leaky ReLU + Dropout2d(``context_dropout`` = 0.1).
    """

    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "OCNet: Object Context Network for Scene Parsing (2018)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "openseg-group/OCNet.pytorch `ASP_OC_Module` and its network head"
    deviations = "auxiliary head is mmseg's FCN on c4, not OCNet's dsn"

    # Export limits (segattn.deploy): format -> why only at a fixed size; tests/test_deploy.py checks them.
    export_static_only = dict.fromkeys(
        ("exported_program", "onnx"), "OCNet ASP's max-pool chooses ceil_mode from the feature size (`min(h, w) < scale`)")
    # ... and formats it does not export to at all
    export_unsupported = {"torchscript": "OCNet ASP's max-pool chooses ceil_mode from the feature size "
                                         "(`min(h, w) < scale`), which tracing turns into a tensor"}

    grad_exempt = {"context.0.bias": BN_REMOVES, "context.4.bias": BN_REMOVES}  # segattn/check.py

    def __init__(
        self,
        channels: int,
        dilations: Sequence[int] = (12, 24, 36),
        context_scale: int = 2,
        context_dropout: float = 0.1,
        impl: str = "fused",
    ):
        super().__init__()
        c = self.channels = int(channels)
        impl = check_impl("oc_asp", impl)
        self.dilations = positive_ints(dilations, "oc_asp: dilations")
        (self.context_scale,) = positive_ints(context_scale, "oc_asp: context_scale")
        b = max(1, c // 2)
        self.context = nn.Sequential(
            *_conv_abn(c, b, kernel=3),
            SelfAttentionBlock(b, max(1, b // 2), b, b, scale=self.context_scale, impl=impl),
            *_conv_abn(b, b),
        )
        self.branches = nn.ModuleList(
            [nn.Sequential(*_conv_abn(c, b, bias=False))]
            + [nn.Sequential(*_conv_abn(c, b, kernel=3, dilation=d, bias=False)) for d in self.dilations]
        )
        self.fuse = nn.Sequential(
            *_conv_abn(b * (2 + len(self.dilations)), c, bias=False),
            nn.Dropout2d(_check_dropout("oc_asp", "context_dropout", context_dropout)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.context(x)] + [branch(x) for branch in self.branches], dim=1))

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        # The context branch's 3x3 conv keeps the size, so (y, x) is the same position there.
        block = next(m for m in self.context if isinstance(m, SelfAttentionBlock))
        return block.attention_maps(y, x, index)
