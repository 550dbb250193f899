"""Spatial Group-wise Enhance (Li et al., "Spatial Group-wise Enhance", arXiv 2019)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .record import Recorder
from .registry import register


@register("sge", block=True)
class SpatialGroupEnhance(Recorder, nn.Module):
    """The official ``SpatialGroupEnhance``: within each of ``groups`` channel groups, every
    position is scored by its similarity to the group's global descriptor, and the normalised
    score gates that position.

    Per group (Sec. 3): g = GAP(x); c_i = g . x_i; c is normalised over the positions
    (zero mean, unit std, eps 1e-5); a_i = gamma * c_i + beta; x_i <- x_i * sigmoid(a_i).
    gamma and beta are one scalar per group, initialised to 0 and 1 as in the official code,
    so the module starts as a uniform rescaling by sigmoid(1).
    """

    # Survey (Guo et al. 2022): 池化 点乘 通道 点乘 全部. The weights are computed from pooling (the group's GAP, then
    # a parameter-free dot product and normalisation; only gamma/beta are learned); they are
    # applied by element-wise product. The domain is spatial: the gate has one value per position
    # and per group, shared by every channel of the group, so it weighs *where* features are, not
    # which channels; the survey's "通道" names the channel descriptor g used to compute it.
    taxonomy = dict(weights="pool", applied="elementwise", domain="spatial")
    paper = "Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks (2019)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "implus/PytorchInsight `SpatialGroupEnhance`"

    def __init__(self, channels: int, groups: int = 64, eps: float = 1e-5):
        super().__init__()
        channels = int(channels)
        if int(groups) < 1 or channels % int(groups):
            raise ValueError(
                f"sge: groups={groups} must be a positive divisor of channels={channels} "
                f"(the paper uses 64 groups; set head.groups to a divisor of {channels})"
            )
        self.channels = channels
        self.groups = int(groups)
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(1, self.groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, self.groups, 1, 1))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial gates in (0, 1), shape (N, groups, H, W)."""
        n, c, h, w = x.shape
        xg = x.reshape(n, self.groups, c // self.groups, h, w)
        score = (xg * xg.mean(dim=(3, 4), keepdim=True)).sum(dim=2).reshape(n, self.groups, h * w)
        score = score - score.mean(dim=2, keepdim=True)
        # The official code uses the unbiased std; a single position has none, so fall back to the
        # biased one there (the centred score is 0 and the gate is sigmoid(beta)).
        std = score.std(dim=2, keepdim=True, correction=1 if h * w > 1 else 0) + self.eps
        score = (score / std).reshape(n, self.groups, h, w)
        return torch.sigmoid(score * self.weight + self.bias)

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The groups' spatial gates: their mean first, then ``group<g>`` for each group."""
        g = self.recorded["gate"][index]
        return {"mean": g.mean(dim=0), **{f"group{i}": m for i, m in enumerate(g)}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        gate = self.gate(x)
        if self.recording:
            self.record(gate=gate, size=(h, w))
        gate = gate.unsqueeze(2)
        return (x.reshape(n, self.groups, c // self.groups, h, w) * gate).reshape(n, c, h, w)
