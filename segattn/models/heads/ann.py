"""ANNNet's head (Zhu et al., "Asymmetric Non-local Neural Networks for Semantic Segmentation", ICCV 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...ops import positive_ints
from ..attention.ann import AFNB, AsymmetricPyramidNonLocal
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("ann")
class ANNHead(BaseDecodeHead):
    """ANNNet's head, as mmseg's ``ANNHead`` (in_index [2, 3]): AFNB fuses c4 (keys / values) into c5
    (queries) at c5's width, dropout, 3x3 conv-BN-ReLU to ``channels`` (``bottleneck``), APNB on that
    (``context``), dropout, classifier. With the recipe (512 channels, project 256, scales (1, 3, 6, 8),
    19 classes) this is mmseg's parameter count."""

    in_index = (-2, -1)
    # configs/ann/metafile.yaml: ann_r{50,101}-d8_4xb2-80k_cityscapes-512x1024
    published = {"r50_d8_cityscapes_80k": 77.34, "r101_d8_cityscapes_80k": 77.14}
    mmseg_params = 20_336_659

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 concat_input: bool = True, project_channels: int = 256,
                 key_pool_scales: Sequence[int] = (1, 3, 6, 8)):
        super().__init__()
        if not concat_input:
            raise ValueError("ann head: concat_input must be true (AFNB and APNB concatenate their input)")
        if len(in_channels) < 2:
            raise ValueError("ann head: needs the last two stages (c4 keys, c5 queries)")
        low, high = (int(in_channels[i]) for i in self.in_index)
        key_pool_scales = positive_ints(key_pool_scales, "ann: key_pool_scales")
        self.fusion = AFNB(low, high, int(project_channels), high, key_pool_scales)
        self.bottleneck = conv_bn_relu(high, channels, 3)
        self.context = AsymmetricPyramidNonLocal(channels, project_channels=project_channels,
                                                 key_pool_scales=key_pool_scales)
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.fusion(*self.inputs(feats))
        x = self.context(self.bottleneck(self.dropout(x)))
        return self.classify(x)
