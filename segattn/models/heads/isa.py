"""ISANet's head (Huang et al., "Interlaced Sparse Self-Attention for Semantic Segmentation", 2019)."""

from __future__ import annotations

import torch

from ..attention.isa import InterlacedSparseSelfAttention
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("isa")
class ISAHead(BaseDecodeHead):
    """ISANet's head, as mmseg's ``ISAHead``: 3x3 conv-BN-ReLU (c5 -> ``channels``), the two relations,
    a 1x1 conv-BN-ReLU on the concatenation of their output with their input (2C -> C), dropout,
    classifier. No concatenation with c5. With the recipe (512 channels, ``key_channels`` 256, 19
    classes) this is mmseg's 11,815,443 parameters."""

    # configs/isanet/README.md: ISANet R-50-D8 / R-101-D8, 512x1024, 80000
    published = {"r50_d8_cityscapes_80k": 78.68, "r101_d8_cityscapes_80k": 80.32}
    mmseg_params = 11_815_443

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 concat_input: bool = False, **isa_kwargs):
        super().__init__()
        if concat_input:
            raise ValueError("isa head: concat_input must be false (ISAHead concatenates the relations' input, not c5)")
        self.reduce = conv_bn_relu(int(in_channels[self.in_index]), channels)
        self.attention = InterlacedSparseSelfAttention(channels, **isa_kwargs)
        self.fuse = conv_bn_relu(2 * channels, channels, 1)
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.reduce(self.inputs(feats))
        return self.classify(self.fuse(torch.cat([self.attention(x), x], dim=1)))
