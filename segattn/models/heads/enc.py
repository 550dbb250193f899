"""EncNet's head (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention.enc import ContextEncoding
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("enc")
class EncHead(BaseDecodeHead):
    """EncNet's head, as mmseg's ``EncHead``: 3x3 conv-BN-ReLU on c5 (``bottleneck``), the context
    encoding module, dropout, classifier; and the semantic-encoding (SE) loss.

    The SE loss (Sec. 3.2) makes the encoded context predict which classes the image holds: a linear
    layer (``se_layer``) gives ``se`` logits (N, num_classes), trained by binary cross-entropy against
    the classes present in the label (255 ignored), weight 0.2 (mmseg's ``loss_se_decode``). It is an
    image-level output (``presence_keys``), not a map. ``add_lateral`` (mmseg's option, off in its
    recipe) fuses 1x1-reduced c3 and c4 into the bottleneck's output with a 3x3 conv-BN-ReLU. With the
    recipe (512 channels, 32 codewords, 19 classes) this is mmseg's 10,000,006 parameters.
    """

    in_index = (1, 2, 3)  # mmseg's encnet config: c3, c4, c5 (c3 and c4 only feed the laterals)
    # configs/encnet/README.md: encnet_r{50,101}-d8_4xb2-80k_cityscapes-512x1024
    published = {"r50_d8_cityscapes_80k": 77.94, "r101_d8_cityscapes_80k": 78.55}
    mmseg_params = 10_000_006

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 num_codes: int = 32, use_se_loss: bool = True, se_loss_weight: float = 0.2,
                 add_lateral: bool = False):
        super().__init__()
        cins = [int(in_channels[i]) for i in self.in_index]
        self.bottleneck = conv_bn_relu(cins[-1], channels, 3)
        self.lateral_convs = self.fusion = None
        if add_lateral:
            self.lateral_convs = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in cins[:-1])
            self.fusion = conv_bn_relu(len(cins) * channels, channels, 3)
        self.attention = ContextEncoding(channels, num_codes=num_codes)
        self.se_layer = nn.Linear(channels, num_classes) if use_se_loss else None
        self.build_classifier(channels, num_classes, dropout)
        self.loss_weights = {"out": 1.0}
        self.presence_keys = set()
        if use_se_loss:
            self.loss_weights["se"] = float(se_loss_weight)
            self.presence_keys = {"se"}

    def forward(self, feats: list[torch.Tensor]):
        inputs = self.inputs(feats)
        feat = self.bottleneck(inputs[-1])
        if self.lateral_convs is not None:
            laterals = [F.interpolate(conv(x), size=feat.shape[2:], mode="bilinear", align_corners=False)
                        for conv, x in zip(self.lateral_convs, inputs)]
            feat = self.fusion(torch.cat([feat, *laterals], 1))
        encoded, out = self.attention.encode(feat)
        out = self.classify(out)
        if self.se_layer is None:
            return out
        return {"out": out, "se": self.se_layer(encoded)}
