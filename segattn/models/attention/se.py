"""Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", TPAMI 2019)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import positive_int
from .record import GatedChannels
from .registry import register


@register("se", block=True)
class SqueezeExcitation(GatedChannels, nn.Module):
    """SENet's ``SELayer``: global average pool -> FC -> ReLU -> FC -> sigmoid, rescaling each channel.

    ``reduction`` is the paper's r (16 in all its ResNet experiments, Sec. 6.1). The hidden width
    is exactly ``channels // reduction``, as in the paper; timm rounds it to a multiple of 8, which
    changes the capacity the ablations measured, so we do not. ``max(1, ...)`` only keeps a
    layer narrower than r (e.g. C=8 with r=16) from having zero hidden units.
    """

    # Survey (Guo et al. 2022): 全连接 点乘 通道域 (fully connected weights, element-wise product, channel domain).
    taxonomy = dict(weights="mlp", applied="elementwise", domain="channel")
    paper = "Squeeze-and-Excitation Networks (2019)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "hujie-frank/SENet `SE-ResNet-50.prototxt` (biases, exactly C/r)"

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.channels = int(channels)
        self.reduction = positive_int(reduction, "se: reduction")
        self.hidden = max(1, self.channels // self.reduction)
        # Biases as in the paper's Eq. 3 and the released Caffe models (W1, W2 with bias terms).
        self.fc = nn.Sequential(
            nn.Linear(self.channels, self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, self.channels),
            nn.Sigmoid(),
        )

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The excitation s in (0, 1), shape (N, C, 1, 1)."""
        n, c = x.shape[:2]
        return self.fc(x.mean(dim=(2, 3))).view(n, c, 1, 1)

