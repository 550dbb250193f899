"""APCNet's head (He et al., "Adaptive Pyramid Context Network for Semantic Segmentation", CVPR 2019)."""

from __future__ import annotations

import torch

from ..attention.apc import AdaptivePyramidContext
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("apc")
class APCHead(BaseDecodeHead):
    """APCNet's head, as mmseg's ``APCHead``: one ACM per pooling scale on c5 itself (each reducing it to
    ``channels``), c5 concatenated with their outputs, a 3x3 conv-BN-ReLU (``bottleneck``), dropout,
    classifier. With the recipe (512 channels, scales (1, 2, 3, 6), 19 classes) this is mmseg's
    30,465,605 parameters."""

    # configs/apcnet/metafile.yaml: apcnet_r{50,101}-d8_4xb2-80k_cityscapes-512x1024
    published = {"r50_d8_cityscapes_80k": 78.96, "r101_d8_cityscapes_80k": 79.64}
    mmseg_params = 30_465_605

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 concat_input: bool = True, **apc_kwargs):
        super().__init__()
        if not concat_input:
            raise ValueError("apc head: concat_input must be true (APCHead concatenates c5 with the ACM outputs)")
        self.inner_width("apc", channels, apc_kwargs)
        cin = int(in_channels[self.in_index])
        self.attention = AdaptivePyramidContext(cin, inner_channels=channels, fuse=False, **apc_kwargs)
        self.bottleneck = conv_bn_relu(cin + len(self.attention.pool_scales) * channels, channels, 3)
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.bottleneck(self.attention.context(self.inputs(feats))))
