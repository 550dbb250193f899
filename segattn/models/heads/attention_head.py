"""The generic attention head: any registered mechanism between two 3x3 convolutions."""

from __future__ import annotations

import torch

from ..attention import build_attention
from ..layers import conv_bn_relu
from .base import BaseDecodeHead


class AttentionHead(BaseDecodeHead):
    """reduce (3x3) -> attention mechanism -> project (3x3) [-> concat input, fuse] -> classifier.

    The shape of mmseg's NLHead / CCHead / GCHead / EMAHead: the mechanism works on
    ``attention_channels`` features (default ``channels``), the convolutions around it belong to
    the head, not to the mechanism. mmseg's EMAHead is the one recipe where the two widths differ
    (``ema_channels=512`` for the EM unit, ``channels=256`` from the 3x3 bottleneck on). Its facts
    (paper, published numbers, export limits, ...) are the mechanism's class attributes.
    """

    def __init__(self, in_channels: list[int], num_classes: int, attention: str, channels: int = 512,
                 dropout: float = 0.1, concat_input: bool = True, attention_channels: int | None = None,
                 **attention_kwargs):
        super().__init__()
        cin = int(in_channels[self.in_index])
        width = int(attention_channels or channels)
        self.reduce = conv_bn_relu(cin, width)
        self.attention = build_attention(attention, width, **attention_kwargs)
        self.project = conv_bn_relu(width, channels)
        self.conv_cat = conv_bn_relu(cin + channels, channels) if concat_input else None
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats):
        x = self.inputs(feats)
        y = self.project(self.attention(self.reduce(x)))
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], 1))
        return self.classify(y)
