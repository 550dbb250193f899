"""The Hamburger head (Geng et al., "Is Attention Better Than Matrix Decomposition?", ICLR 2021)."""

from __future__ import annotations

import torch

from ..attention.ham import Hamburger
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("ham")
class HamHead(BaseDecodeHead):
    """mmseg's ``LightHamHead`` on c5 of the dilated ResNet: 1x1 conv-BN-ReLU to ``ham_channels``
    (``squeeze``), the Hamburger, 1x1 conv-BN-ReLU to ``channels`` (``align``), dropout, classifier.

    mmseg builds it for SegNeXt on three stages resized to the first and concatenated (``in_index``
    [1, 2, 3]); on the dilated ResNet those stages share one size and the head reads c5 alone, the
    HamNet of the paper. At the recipe's widths (2048 -> 512, 19 classes) mmseg's head has 1,848,339
    parameters (``mmseg_params``; SegNeXt-T's, 64/160/256 -> 256 for 150 classes, 359,830).
    """

    # mmseg publishes the Hamburger only inside SegNeXt, not on R50/R101-D8: no published mIoU here
    mmseg_params = 1_848_339

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 ham_channels: int = 512, **ham_kwargs):
        super().__init__()
        self.squeeze = conv_bn_relu(int(in_channels[self.in_index]), ham_channels, 1)
        self.attention = Hamburger(ham_channels, **ham_kwargs)
        self.align = conv_bn_relu(ham_channels, channels, 1)
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.align(self.attention(self.squeeze(self.inputs(feats)))))
