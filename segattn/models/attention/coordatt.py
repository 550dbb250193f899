"""Coordinate attention (Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import positive_int
from .record import Recorder
from .registry import BN_REMOVES, register


@register("coordatt", block=True)
class CoordAtt(Recorder, nn.Module):
    """The official ``CoordAtt`` (houqb/CoordAttention): SE's squeeze split along the two axes.

    Direction-aware pooling averages each row (an (H, 1) strip per channel) and each column
    ((1, W)), so the gates keep where along the other axis a feature lies. The two strips are
    concatenated along their length, transformed together by a shared 1x1 conv to
    ``max(min_channels, C // reduction)`` channels (8 and 32 in the official code), BN and h-swish,
    split back, and each part gives sigmoid gates of C channels by its own 1x1 conv (``conv_h``,
    ``conv_w``). out = x * a_h * a_w: a (C, H, 1) gate times a (C, 1, W) one. PyTorch's default
    initialisation, as the official code.
    """

    # Survey (Guo et al. 2022) lists it with the channel & spatial attentions: the gates come from average pooling
    # along each axis and 1x1 convolutions on the pooled strips (pool+conv), multiply the features (elementwise),
    # and are per channel and per row / column (channel+spatial).
    taxonomy = dict(weights="pool+conv", applied="elementwise", domain="channel+spatial")
    grad_exempt = {"conv1.bias": BN_REMOVES}  # segattn/check.py
    paper = "Coordinate Attention for Efficient Mobile Network Design (2021)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "houqb/CoordAttention `CoordAtt`"

    def __init__(self, channels: int, reduction: int = 32, min_channels: int = 8):
        super().__init__()
        reduction = positive_int(reduction, "coordatt: reduction")
        min_channels = positive_int(min_channels, "coordatt: min_channels")
        self.channels = int(channels)
        self.mid_channels = max(min_channels, self.channels // reduction)
        self.conv1 = nn.Conv2d(self.channels, self.mid_channels, 1)
        self.bn1 = nn.BatchNorm2d(self.mid_channels)
        self.act = nn.Hardswish()  # the official h_swish: x * ReLU6(x + 3) / 6
        self.conv_h = nn.Conv2d(self.mid_channels, self.channels, 1)
        self.conv_w = nn.Conv2d(self.mid_channels, self.channels, 1)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a_h (N, C, H, 1) and a_w (N, C, 1, W), in (0, 1)."""
        h, w = x.shape[-2:]
        x_h = x.mean(dim=3, keepdim=True)  # (N, C, H, 1)
        x_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (N, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        return self.conv_h(y_h).sigmoid(), self.conv_w(y_w.transpose(2, 3)).sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_h, a_w = self.gates(x)
        if self.recording:
            self.record(a_h=a_h[..., 0], a_w=a_w[:, :, 0], size=tuple(x.shape[-2:]))
        return x * a_w * a_h

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The gate a_h * a_w averaged over the channels (``gate``), and its two factors (``rows``: the
        height gate, the same along a row; ``columns``: the width gate), each (H, W)."""
        a_h, a_w = self.recorded["a_h"][index], self.recorded["a_w"][index]  # (C, H), (C, W)
        h, w = self.recorded["size"]
        return {"gate": torch.einsum("ch,cw->hw", a_h, a_w) / a_h.shape[0],
                "rows": a_h.mean(0)[:, None].expand(h, w), "columns": a_w.mean(0)[None, :].expand(h, w)}
