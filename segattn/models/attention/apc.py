"""Adaptive pyramid context (He et al., "Adaptive Pyramid Context Network for Semantic Segmentation",
CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int, positive_ints
from ..layers import conv_bn_relu
from .record import Recorder
from .registry import register


class ACM(nn.Module):
    """One adaptive context module (paper Sec. 3.2, mmseg ``ACM``) at pooling scale s.

    The input is pooled to s x s regions and reduced (``pooled_redu_conv``: the region
    representations); the input itself is reduced too (``input_redu_conv``). Each position's
    affinity to the s^2 regions is predicted from its own feature plus the global context
    (``global_info`` on the image mean): a 1x1 conv (``gla``) to s^2 logits and a sigmoid, not a
    softmax. The adaptive context sum_k a_ik r_k goes through ``residual_conv``, is added to the
    reduced input, ReLU, and through ``fusion_conv``.
    """

    def __init__(self, pool_scale: int, in_channels: int, channels: int, fusion: bool = True):
        super().__init__()
        self.pool_scale = pool_scale
        self.pooled_redu_conv = conv_bn_relu(in_channels, channels, 1)
        self.input_redu_conv = conv_bn_relu(in_channels, channels, 1)
        self.global_info = conv_bn_relu(channels, channels, 1)
        self.gla = nn.Conv2d(channels, pool_scale ** 2, 1)  # PyTorch's default initialisation, as mmseg
        self.residual_conv = conv_bn_relu(channels, channels, 1)
        self.fusion_conv = conv_bn_relu(channels, channels, 1) if fusion else None

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """(N, HW, s^2) sigmoid affinities of the positions to the regions; ``x`` is the reduced input."""
        n = x.shape[0]
        # mmseg resizes the 1x1 global context to the map's size (bilinear): the same value everywhere.
        logits = self.gla(x + self.global_info(x.mean(dim=(2, 3), keepdim=True)))
        return logits.flatten(2).transpose(1, 2).reshape(n, -1, self.pool_scale ** 2).sigmoid()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        regions = self.pooled_redu_conv(F.adaptive_avg_pool2d(x, self.pool_scale)).flatten(2)  # (N, C', s^2)
        x = self.input_redu_conv(x)
        affinity = self.affinity(x)
        context = torch.bmm(regions, affinity.transpose(1, 2)).view(n, -1, h, w)
        out = F.relu(self.residual_conv(context) + x)
        return (self.fusion_conv(out) if self.fusion_conv is not None else out), affinity


@register("apc")
class AdaptivePyramidContext(Recorder, nn.Module):
    """APCNet's adaptive context modules at several pooling scales (1, 2, 3, 6), mmseg ``APCHead``'s body.

    :meth:`context` is the concatenation of the input with every ACM's output (C + S * C' channels),
    what APCNet's bottleneck reads (``APCHead``, built with ``fuse=False``). To keep the registry's
    C -> C contract for other uses, the module alone fuses that concatenation back to C with a 1x1
    conv-BN-ReLU (``fuse``). ``inner_channels``: the ACMs' width (C // 4 by default; the recipe's
    2048 -> 512). ``fusion``: each ACM's last 1x1 conv (mmseg's default, True).
    """

    # Survey (Guo et al. 2022): each position's affinities to the pooled regions come from a 1x1 conv on its
    # feature plus the global context (conv), and gather the region features by a matrix product (matmul),
    # over the spatial positions (spatial).
    taxonomy = dict(weights="conv", applied="matmul", domain="spatial")
    paper = "Adaptive Pyramid Context Network for Semantic Segmentation (2019)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `APCHead` (`ACM`)"
    deviations = "the registered module alone fuses cat(x, contexts) back to C"

    # Export limits (segattn.deploy): format -> why only at a fixed size; tests/test_deploy.py checks them.
    export_static_only = {"onnx": "ONNX has no adaptive average pooling: the exporter fixes APCNet's s x s "
                                  "pooling windows for the export size"}

    def __init__(self, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6), inner_channels: int | None = None,
                 fusion: bool = True, fuse: bool = True):
        super().__init__()
        inner_channels = max(1, channels // 4) if inner_channels is None else inner_channels
        self.channels, self.inner_channels = int(channels), positive_int(inner_channels, "apc: inner_channels")
        self.pool_scales = positive_ints(pool_scales, "apc: pool_scales")
        self.acm_modules = nn.ModuleList(ACM(s, self.channels, self.inner_channels, bool(fusion))
                                         for s in self.pool_scales)
        width = self.channels + len(self.pool_scales) * self.inner_channels
        self.fuse = conv_bn_relu(width, self.channels, 1) if fuse else None

    def context(self, x: torch.Tensor) -> torch.Tensor:
        outs, affinities = [x], []
        for acm in self.acm_modules:
            out, affinity = acm(x)
            outs.append(out)
            affinities.append(affinity)
        if self.recording:
            self.record(size=tuple(x.shape[-2:]), **{f"scale_{s}": a for s, a in zip(self.pool_scales, affinities)})
        return torch.cat(outs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse is None:
            raise RuntimeError("apc: built with fuse=False (inside APCHead): call context(x)")
        return self.fuse(self.context(x))

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """Per scale s, the sigmoid affinities of position (y, x) to the s x s regions, drawn on the input
        grid: each pixel shows the weight of the region floor(i * s / H), floor(j * s / W) it lies in
        (each in (0, 1); they do not sum to one: APCNet's affinities are sigmoids)."""
        h, w = self.recorded["size"]
        maps = {}
        for s in self.pool_scales:
            row = self.recorded[f"scale_{s}"][index, y * w + x].view(s, s)
            rows, cols = torch.arange(h) * s // h, torch.arange(w) * s // w
            maps[f"scale_{s}"] = row[rows.to(row.device)][:, cols.to(row.device)]
        return maps
