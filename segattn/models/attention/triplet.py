"""Triplet attention (Misra et al., "Rotate to Attend: Convolutional Triplet Attention Module", WACV 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import positive_int
from .record import Recorder
from .registry import register


class AttentionGate(nn.Module):
    """Z-pool (max and mean over dimension 1), k x k conv to one map (no bias), BN, sigmoid: the official
    ``AttentionGate`` (its ``BasicConv``: BN eps 1e-5, momentum 0.01)."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


@register("triplet", block=True)
class TripletAttention(Recorder, nn.Module):
    """The official ``TripletAttention``: three branches, each rotating x so that a different pair of
    dimensions forms the plane a gate is computed on, and averaging the three gated copies.

    ``cw``: x rotated to (N, H, C, W), Z-pooled over H, a gate on the (C, W) plane; ``hc``: rotated to
    (N, W, H, C), a gate on (H, C); ``hw``: not rotated, a gate on (H, W) (CBAM's spatial gate; left out
    with ``no_spatial``). Cross-dimension interaction without any reduction of C; 2 x 49 weights per branch.
    """

    # The gates come from Z-pooling (pool) and a 7x7 conv (conv), multiply the features (elementwise), on the
    # channel-width, height-channel and height-width planes (channel+spatial).
    taxonomy = dict(weights="pool+conv", applied="elementwise", domain="channel+spatial")
    paper = "Rotate to Attend: Convolutional Triplet Attention Module (2021)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "landskape-ai/triplet-attention `TripletAttention`"

    def __init__(self, channels: int, kernel_size: int = 7, no_spatial: bool = False):
        super().__init__()
        kernel_size = positive_int(kernel_size, "triplet: kernel_size", odd=True)
        self.channels = int(channels)
        self.cw = AttentionGate(kernel_size)
        self.hc = AttentionGate(kernel_size)
        self.hw = None if no_spatial else AttentionGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g_cw = self.cw(x.permute(0, 2, 1, 3))  # (N, 1, C, W)
        g_hc = self.hc(x.permute(0, 3, 2, 1))  # (N, 1, H, C)
        out_cw = x * g_cw.permute(0, 2, 1, 3)  # the gate rotated back: (N, C, 1, W)
        out_hc = x * g_hc.permute(0, 3, 2, 1)  # (N, C, H, 1)
        g_hw = self.hw(x) if self.hw is not None else None
        if self.recording:
            self.record(cw=g_cw[:, 0], hc=g_hc[:, 0].transpose(1, 2), size=tuple(x.shape[-2:]),
                        **({"hw": g_hw[:, 0]} if g_hw is not None else {}))
        if g_hw is None:
            return 1 / 2 * (out_cw + out_hc)
        return 1 / 3 * (x * g_hw + out_cw + out_hc)

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The (H, W) gate (``hw``), and the other two branches' gates averaged over the channels: ``cw``
        (one value per column), ``hc`` (one per row), each drawn as (H, W)."""
        h, w = self.recorded["size"]
        maps = {"hw": self.recorded["hw"][index]} if "hw" in self.recorded else {}
        maps["cw"] = self.recorded["cw"][index].mean(0)[None, :].expand(h, w)
        maps["hc"] = self.recorded["hc"][index].mean(0)[:, None].expand(h, w)
        return maps

    def gate_values(self) -> dict[str, torch.Tensor]:
        """Per channel, the (C, W) gate averaged over the columns (``cw``) and the (C, H) one over the rows
        (``hc``), (N, C) each."""
        return {"cw": self.recorded["cw"].mean(2), "hc": self.recorded["hc"].mean(2)}
