"""EANet's head (Guo et al., "Beyond Self-attention: External Attention using Two Linear Layers for Visual
Tasks", 2021)."""

from __future__ import annotations

import torch

from ..attention.external import ExternalAttention
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("external")
class ExternalAttentionHead(BaseDecodeHead):
    """The authors' ``EANet`` head on c5: 3x3 conv-BN-ReLU to ``channels`` (``fc0``), external attention,
    3x3 conv-BN-ReLU to ``out_channels`` (``fc1``), dropout, classifier (``fc2``; mmseg's N(0, 0.01) start
    like every head here)."""

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 out_channels: int = 256, **ea_kwargs):
        super().__init__()
        self.fc0 = conv_bn_relu(int(in_channels[self.in_index]), channels, 3)
        self.attention = ExternalAttention(channels, **ea_kwargs)
        self.fc1 = conv_bn_relu(channels, out_channels, 3)
        self.build_classifier(out_channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.fc1(self.attention(self.fc0(self.inputs(feats)))))
