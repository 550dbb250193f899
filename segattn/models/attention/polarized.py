"""Polarized self-attention (Liu et al., "Polarized Self-Attention: Towards High-quality Pixel-wise
Regression", 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .record import Recorder
from .registry import SOFTMAX_SHIFT, register

LAYOUTS = ("parallel", "sequential")


@register("polarized", block=True)
class PolarizedSelfAttention(Recorder, nn.Module):
    """External-Attention-pytorch's ``ParallelPolarizedSelfAttention`` / ``SequentialPolarizedSelfAttention``:
    the paper's Eqs. 1-5, a channel-only and a spatial-only branch, each collapsing the other dimension
    completely while keeping half the channels inside ("polarized filtering").

    Channel-only: a softmax over the positions of a 1-channel query (``ch_wq``) pools the C/2-channel
    values (``ch_wv``); a 1x1 conv back to C (``ch_wz``), LayerNorm over the C channels, sigmoid: a gate
    per channel. Spatial-only: the C/2-channel query (``sp_wq``) average-pooled and softmaxed over its
    channels weighs the C/2-channel values (``sp_wv``) at each position, sigmoid: a gate per position.
    ``layout="parallel"`` sums the two gated copies of x (Eq. 6); ``"sequential"`` gates the channels
    first and then the positions of the result (Eq. 7). PyTorch's default initialisation, as that code.
    """

    # Both gates are softmax-weighted products of queries and values (matmul), multiply the features
    # (elementwise), one per channel and one per position (channel+spatial).
    taxonomy = dict(weights="matmul", applied="elementwise", domain="channel+spatial")
    grad_exempt = {"ch_wq.bias": SOFTMAX_SHIFT}  # the channel branch's softmax over positions (segattn/check.py)
    paper = "Polarized Self-Attention: Towards High-quality Pixel-wise Regression (2021)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = ("External-Attention-pytorch `ParallelPolarizedSelfAttention` / `SequentialPolarizedSelfAttention` "
                 "(the paper's equations)")
    deviations = ("the paper's LayerNorm and channel softmax, as External-Attention-pytorch; DeLightCMU/PSA's "
                  "`PSA_p` has no LayerNorm, no biases, and a softmax over the positions in the spatial branch")

    def __init__(self, channels: int, layout: str = "parallel"):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"polarized: layout must be one of {LAYOUTS}, got {layout!r}")
        self.channels, self.layout = int(channels), layout
        half = max(1, self.channels // 2)
        self.ch_wv = nn.Conv2d(self.channels, half, 1)
        self.ch_wq = nn.Conv2d(self.channels, 1, 1)
        self.ch_wz = nn.Conv2d(half, self.channels, 1)
        self.ln = nn.LayerNorm(self.channels)
        self.sp_wv = nn.Conv2d(self.channels, half, 1)
        self.sp_wq = nn.Conv2d(self.channels, half, 1)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 1, 1) in (0, 1)."""
        n = x.shape[0]
        wq = torch.softmax(self.ch_wq(x).reshape(n, -1, 1), dim=1)  # (N, HW, 1): over the positions
        wz = torch.matmul(self.ch_wv(x).flatten(2), wq).unsqueeze(-1)  # (N, C/2, 1, 1)
        return torch.sigmoid(self.ln(self.ch_wz(wz).reshape(n, 1, -1))).reshape(n, -1, 1, 1)

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in (0, 1)."""
        n, _, h, w = x.shape
        wq = torch.softmax(self.sp_wq(x).mean(dim=(2, 3)).reshape(n, 1, -1), dim=-1)  # over the C/2 channels
        return torch.sigmoid(torch.matmul(wq, self.sp_wv(x).flatten(2)).reshape(n, 1, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = self.channel_gate(x)
        if self.layout == "parallel":
            spatial = self.spatial_gate(x)
            out = spatial * x + channel * x
        else:
            y = channel * x
            spatial = self.spatial_gate(y)
            out = spatial * y
        if self.recording:
            self.record(channel=channel.flatten(1), spatial=spatial[:, 0], size=tuple(x.shape[-2:]))
        return out

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The spatial-only branch's gate (H, W)."""
        return {"spatial": self.recorded["spatial"][index]}

    def gate_values(self) -> dict[str, torch.Tensor]:
        """The channel-only branch's gate (N, C)."""
        return {"channel": self.recorded["channel"]}
