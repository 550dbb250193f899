"""Efficient Channel Attention (Wang et al., "ECA-Net", CVPR 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ...ops import positive_int
from .record import GatedChannels
from .registry import register


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """The paper's adaptive kernel size (Eq. 12): k = |log2(C)/gamma + b/gamma|, nearest odd.

    "Nearest odd" is computed as the official ``eca_resnet`` does: truncate, then bump an even
    value up by one (C=64 -> 3, C=128/256/512 -> 5).
    """
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@register("eca", block=True)
class ECA(GatedChannels, nn.Module):
    """ECA's ``eca_layer``: GAP -> 1-D convolution across channels -> sigmoid -> rescale.

    No dimensionality reduction (Sec. 3.2.1 shows that SE's bottleneck hurts), and each channel's
    weight only sees its k neighbouring channels ("local cross-channel interaction"). The 1-D conv
    has no bias and zero padding (k-1)//2, as in the official code.
    """

    # Survey (Guo et al. 2022): 卷积 点乘 通道 (convolution weights, element-wise product, channel domain).
    taxonomy = dict(weights="conv", applied="elementwise", domain="channel")
    paper = "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks (2020)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "BangguWu/ECANet `eca_layer`, k from the paper's Eq. 12"

    def __init__(self, channels: int, k_size: int | None = None, gamma: float = 2.0, b: float = 1.0):
        super().__init__()
        k_size = positive_int(k_size, "eca: k_size", odd=True, null=True, hint=" (null: the adaptive size)")
        self.channels = int(channels)
        self.k_size = eca_kernel_size(self.channels, gamma, b) if k_size is None else k_size
        self.conv = nn.Conv1d(1, 1, kernel_size=self.k_size, padding=(self.k_size - 1) // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights in (0, 1), shape (N, C, 1, 1)."""
        n, c = x.shape[:2]
        y = x.mean(dim=(2, 3)).view(n, 1, c)
        return torch.sigmoid(self.conv(y)).view(n, c, 1, 1)

