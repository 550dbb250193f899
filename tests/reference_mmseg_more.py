"""Independent re-implementations of more mmsegmentation 1.x decode heads, for equivalence tests.

The companion of tests/reference_mmseg.py (whose mmcv bricks it reuses), written from mmseg's own
sources in plain PyTorch with their module and attribute names:

- open-mmlab/mmsegmentation  mmseg/models/decode_heads/{dnl_head,isa_head,apc_head,ocr_head,ann_head}.py,
                             mmseg/models/utils/self_attention_block.py (the general form, all options)

Only what the recipes use is kept (BN and ReLU). Not collected by pytest (no ``test_`` prefix); used
by tests/test_more_heads.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_mmseg import BaseDecodeHead, ConvModule, NonLocal2d, _BlockBetweenConvsHead, resize  # noqa: F401


# ---- Disentangled non-local ---------------------------------------------------------------------
class DisentangledNonLocal2d(NonLocal2d):
    """Follows DisentangledNonLocal2d in mmseg/models/decode_heads/dnl_head.py: mmcv NonLocal2d plus
    ``conv_mask`` (1x1 -> 1, bias), whitening (theta minus its mean over positions, phi too), logits
    / sqrt(C') / temperature in embedded_gaussian, unary term softmax(conv_mask(x)) @ g, and
    x + conv_out(y) + conv_out(unary_x)."""

    def __init__(self, *args, temperature, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.conv_mask = nn.Conv2d(self.in_channels, 1, kernel_size=1)

    def embedded_gaussian(self, theta_x, phi_x):
        pairwise_weight = torch.matmul(theta_x, phi_x)
        if self.use_scale:
            pairwise_weight /= theta_x.shape[-1] ** 0.5
        pairwise_weight /= self.temperature
        return pairwise_weight.softmax(dim=-1)

    def forward(self, x):
        n = x.size(0)
        g_x = self.g(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(n, self.inter_channels, -1)
        theta_x -= theta_x.mean(dim=-2, keepdim=True)
        phi_x -= phi_x.mean(dim=-1, keepdim=True)
        pairwise_weight = getattr(self, self.mode)(theta_x, phi_x)
        y = torch.matmul(pairwise_weight, g_x)
        y = y.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, *x.size()[2:])
        unary_mask = self.conv_mask(x).view(n, 1, -1).softmax(dim=-1)
        unary_x = torch.matmul(unary_mask, g_x)
        unary_x = unary_x.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, 1, 1)
        return x + self.conv_out(y) + self.conv_out(unary_x)


class DNLHead(_BlockBetweenConvsHead):
    """Follows mmseg/models/decode_heads/dnl_head.py: FCNHead(num_convs=2) with ``dnl_block`` between
    convs[0] and convs[1]."""

    def __init__(self, reduction=2, use_scale=True, mode="embedded_gaussian", temperature=0.05, **kwargs):
        super().__init__(num_convs=2, **kwargs)
        self.dnl_block = DisentangledNonLocal2d(self.channels, reduction=reduction, use_scale=use_scale, mode=mode,
                                                temperature=temperature)

    def block(self, x):
        return self.dnl_block(x)
