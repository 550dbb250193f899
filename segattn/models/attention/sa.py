"""Squeeze-and-Attention (Zhong et al., "Squeeze-and-Attention Networks for Semantic Segmentation", CVPR 2020).

``SqueezeAttention`` is the SA module (registered as ``sa``); SANet's decode head, which puts SA modules
on several backbone stages and supervises each of them, is ``segattn.models.heads.sa.SAHead``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int
from ..layers import conv_bn_relu
from .record import Recorder
from .registry import register


@register("sa")
class SqueezeAttention(Recorder, nn.Module):
    """The SA module (Sec. 3.3, Eqs. 3-5): X_out = X_attn * X_res + X_attn.

    X_res = ReLU(BN(conv3x3(X))) is the ordinary "residual" convolution channel. X_attn is the
    "attention" channel: X is average-pooled by ``pool_size`` (2 in the paper: a *spatial* squeeze,
    unlike SE's global one, so the attention keeps a coarse map of pixel groups), passed through
    two conv3x3+BN layers (the first with ReLU), squashed by a sigmoid and upsampled back to the
    input size. The "+ X_attn" term lets the attention channel pass information even where the
    residual channel is zero.

    Choices where the paper is silent and the widely copied ``SqueezeAttentionBlock`` (no official
    code was released) differs:
    - the last attention conv has no ReLU before the sigmoid: sigmoid(ReLU(.)) would never fall
      below 0.5, so the module could not suppress anything;
    - the sigmoid comes before the upsampling, as in Up(sigma(.)) of Eq. 4; bilinear interpolation
      of a map in (0, 1) stays in (0, 1), and the result fits any input size (the copied block's
      ``Upsample(scale_factor=2)`` breaks on odd sizes);
    - pooling uses ``ceil_mode`` so that a 1-pixel-wide input still has one pooled cell.
    """

    # Survey (Guo et al. 2022): 卷积 点乘 通道 (convolution weights, element-wise product). The attention map has one
    # value per channel *and* per (pooled) position, so its domain is spatial+channel; it is applied
    # by a product with X_res and then *added* (the "+ X_attn" term), hence elementwise+add.
    taxonomy = dict(weights="conv", applied="elementwise+add", domain="spatial+channel")
    paper = "Squeeze-and-Attention Networks for Semantic Segmentation (2020)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "none released: the paper's equations"
    deviations = "no ReLU before the sigmoid, sigmoid before the upsampling (see `SqueezeAttention`)"

    def __init__(self, channels: int, pool_size: int = 2):
        super().__init__()
        channels = int(channels)
        self.pool_size = positive_int(pool_size, "sa: pool_size", hint=" (paper: 2)")
        self.res = conv_bn_relu(channels, channels, 3)
        self.attn = nn.Sequential(conv_bn_relu(channels, channels, 3), conv_bn_relu(channels, channels, 3, act=None))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """X_attn in (0, 1), shape (N, C, H, W)."""
        p = self.pool_size
        y = F.avg_pool2d(x, p, p, ceil_mode=True) if p > 1 else x
        y = torch.sigmoid(self.attn(y))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        if self.recording:
            self.record(attention=a, size=tuple(x.shape[-2:]))
        return a * self.res(x) + a

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """X_attn averaged over the channels: where the attention branch lets features through."""
        return {"mean": self.recorded["attention"][index].mean(dim=0)}

    def gate_values(self) -> dict[str, torch.Tensor]:
        """X_attn averaged over the positions, (N, C): how much of each channel passes."""
        return {"mean": self.recorded["attention"].mean(dim=(2, 3))}
