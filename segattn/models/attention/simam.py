"""SimAM (Yang et al., "SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks",
ICML 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .record import Recorder
from .registry import register


@register("simam", block=True)
class SimAM(Recorder, nn.Module):
    """The official ``simam_module``: every neuron weighted by the inverse of its minimal energy (Eq. 16).

    Per channel, t's energy is low when t stands out from the other neurons of its channel:
    1 / e_t = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2, with mu and sigma^2 = sum (x - mu)^2 / n over the
    channel's n + 1 = H W positions; out = x * sigmoid(1 / e_t). No parameters; lambda = 1e-4.
    A 1 x 1 map has n = 0: the official code divides 0 by 0 there (NaN); here n is at least 1, which
    gives the map's single neuron the weight sigmoid(1/2) (its deviation is 0).
    """

    # The weights come from each channel's spatial statistics, its mean and variance (pool), multiply every
    # neuron (elementwise), and differ per channel and per position (channel+spatial: full 3-D weights).
    taxonomy = dict(weights="pool", applied="elementwise", domain="channel+spatial")
    paper = "SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks (2021)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "ZjjConan/SimAM `simam_module` (External-Attention-pytorch `SimAM`)"
    deviations = "n = max(HW - 1, 1): a 1x1 map gets weight sigmoid(1/2) where the official code gives NaN"

    def __init__(self, channels: int, e_lambda: float = 1e-4):
        super().__init__()
        if not float(e_lambda) > 0:
            raise ValueError(f"simam: e_lambda must be > 0 (the paper's lambda, 1e-4), got {e_lambda!r}")
        self.channels, self.e_lambda = int(channels), float(e_lambda)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        n = max(h * w - 1, 1)
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        return torch.sigmoid(d / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + self.e_lambda)) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate(x)
        if self.recording:
            self.record(gate=gate.mean(1), channel=gate.mean(dim=(2, 3)), size=tuple(x.shape[-2:]))
        return x * gate

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The neurons' weights averaged over the channels (H, W)."""
        return {"gate": self.recorded["gate"][index]}

    def gate_values(self) -> dict[str, torch.Tensor]:
        """The neurons' weights averaged over the positions (N, C)."""
        return {"channel": self.recorded["channel"]}
