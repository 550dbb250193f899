"""DMNet's head (He et al., "Dynamic Multi-scale Filters for Semantic Segmentation", ICCV 2019)."""

from __future__ import annotations

import torch

from ..attention.dm import DynamicMultiScale
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("dm")
class DMHead(BaseDecodeHead):
    """DMNet's head, as mmseg's ``DMHead``: one DCM per filter size on c5 itself (each reducing it to
    ``channels``), c5 concatenated with their outputs, a 3x3 conv-BN-ReLU (``bottleneck``), dropout,
    classifier. With the recipe (512 channels, filter sizes (1, 3, 5, 7), 19 classes) this is mmseg's
    27,283,987 parameters."""

    # configs/dmnet/README.md: dmnet_r{50,101}-d8_4xb2-80k_cityscapes-512x1024
    published = {"r50_d8_cityscapes_80k": 79.07, "r101_d8_cityscapes_80k": 79.64}
    mmseg_params = 27_283_987

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 concat_input: bool = True, **dm_kwargs):
        super().__init__()
        if not concat_input:
            raise ValueError("dm head: concat_input must be true (DMHead concatenates c5 with the DCM outputs)")
        self.inner_width("dm", channels, dm_kwargs)
        cin = int(in_channels[self.in_index])
        self.attention = DynamicMultiScale(cin, inner_channels=channels, fuse=False, **dm_kwargs)
        self.bottleneck = conv_bn_relu(cin + len(self.attention.filter_sizes) * channels, channels, 3)
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.bottleneck(self.attention.context(self.inputs(feats))))
