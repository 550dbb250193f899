"""DANet's head (Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019)."""

from __future__ import annotations

import torch

from ..attention.da import DualAttention
from ..layers import classifier, conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("da")
class DAHead(BaseDecodeHead):
    """DANet's head (official ``DANetHead``, mmsegmentation ``DAHead``) on the last backbone stage.

    Per branch: conv3x3 reduce + BN + ReLU -> PAM or CAM -> conv3x3 + BN + ReLU -> classifier; the
    two branch features are summed for the main classifier. All three outputs are supervised
    with weight 1 (the official code's loss over the three outputs, mmsegmentation's three
    ``loss_decode`` terms); inference uses only the fused ``out``.

    Every classifier is preceded by Dropout2d(dropout) as in both codes (0.1), and initialised
    N(0, 0.01) as mmsegmentation's decode heads are.
    """

    loss_weights = {"out": 1.0, "pam": 1.0, "cam": 1.0}
    # mmsegmentation 1.x single-scale val mIoU, R50-D8 / R101-D8, Cityscapes 512x1024, 80k iterations
    published = {"r50_d8_cityscapes_80k": 79.34, "r101_d8_cityscapes_80k": 80.41}
    mmseg_params = 23_954_619

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 concat_input: bool = False, **hyper_params):
        super().__init__()
        cin = int(in_channels[self.in_index])
        if concat_input:
            raise ValueError("da head: concat_input must be false (DANet's head does not concatenate the backbone feature)")
        self.attention = DualAttention(channels, **hyper_params)
        self.pam_in = conv_bn_relu(cin, channels)
        self.pam_out = conv_bn_relu(channels, channels)
        self.cam_in = conv_bn_relu(cin, channels)
        self.cam_out = conv_bn_relu(channels, channels)
        self.pam_cls = classifier(channels, num_classes)
        self.cam_cls = classifier(channels, num_classes)
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.inputs(feats)
        pam_feat = self.pam_out(self.attention.pam(self.pam_in(x)))
        cam_feat = self.cam_out(self.attention.cam(self.cam_in(x)))
        return {
            "out": self.classify(pam_feat + cam_feat),
            "pam": self.pam_cls(self.dropout(pam_feat)),
            "cam": self.cam_cls(self.dropout(cam_feat)),
        }
