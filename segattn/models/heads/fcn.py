"""The FCN baseline head (Long et al., "Fully Convolutional Networks for Semantic Segmentation", 2015)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("fcn")
class FCNHead(BaseDecodeHead):
    """Fully Convolutional Networks for Semantic Segmentation (2015), as mmseg's FCNHead.

    ``num_convs`` 3x3 conv-BN-ReLU layers on stage ``in_index``; with ``concat_input`` the input is
    concatenated with their output and fused by one more 3x3 conv; dropout; 1x1 classifier. Also the
    auxiliary head on c4 and OCRNet's region head (one conv, no concatenation).
    """

    paper = "Fully Convolutional Networks for Semantic Segmentation (2015)"
    reference = "mmseg `FCNHead`"
    # mmsegmentation 1.x single-scale val mIoU, R50-D8 / R101-D8, Cityscapes 512x1024, 80k iterations
    published = {"r50_d8_cityscapes_80k": 73.61, "r101_d8_cityscapes_80k": 75.13}
    mmseg_params = 23_605_779

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, num_convs: int = 2,
                 concat_input: bool = True, dropout: float = 0.1, in_index: int = -1):
        super().__init__()
        self.in_index = in_index
        cin = int(in_channels[in_index])
        layers = [conv_bn_relu(cin if i == 0 else channels, channels) for i in range(num_convs)]
        self.convs = nn.Sequential(*layers) if layers else nn.Identity()
        self.conv_cat = conv_bn_relu(cin + channels, channels) if concat_input else None
        self.build_classifier(channels if num_convs or concat_input else cin, num_classes, dropout)

    def forward(self, feats):
        x = self.inputs(feats)
        y = self.convs(x)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], 1))
        return self.classify(y)
