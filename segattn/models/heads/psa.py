"""PSANet's head (Zhao et al., "PSANet: Point-wise Spatial Attention Network for Scene Parsing", ECCV 2018)."""

from __future__ import annotations

import torch

from ..attention.psa import PointwiseSpatialAttention
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("psa")
class PSAHead(BaseDecodeHead):
    """PSANet's head (hszhao/semseg ``PSANet``, mmsegmentation ``PSAHead``) on the last backbone stage.

    The PSA module runs on c5 itself (2048 channels): each branch reduces it to ``channels`` (512)
    with a 1x1 conv, predicts its over-complete masks, aggregates, and the branches are projected
    back to c5's width (``proj``, 1024 -> 2048). c5 and that context are concatenated and a 3x3
    conv (4096 -> ``channels``, the ``bottleneck``) feeds the classifier, after dropout. With the
    recipe's 19 classes this is mmseg's 33,246,739 parameters.

    ``proj_padding`` (1, as mmseg's ``PSAHead``, whose 1x1 ``proj`` ConvModule is built with
    ``padding=1``): the projected context is then (h+2) x (w+2), a border of ReLU(BN shift) around
    it, and the resize back to c5's size blends that border in. The published mmseg models were
    trained so; 0 is the authors' PSANet (hszhao/semseg), whose projection is unpadded.
    """

    # mmsegmentation 1.x single-scale val mIoU, R50-D8 / R101-D8, Cityscapes 512x1024, 80k iterations
    published = {"r50_d8_cityscapes_80k": 77.24, "r101_d8_cityscapes_80k": 79.31}
    mmseg_params = 33_246_739
    # mmsegmentation changes the over-complete mask per dataset: (97, 97) for the Cityscapes recipes (the
    # default) and (66, 66) for ADE20K. Where a mask does not reach (the 512x1024 crops), the attention logit
    # is 0, as in the official psamask op, so PSANet trains and tests like every other head: whole images,
    # as mmseg's 512x1024 and ADE20K R50-D8 recipes do.
    recipe_extras = {"r50_d8_ade20k_160k": {"head": {"mask_size": "[66, 66]"}}}

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 concat_input: bool = True, proj_padding: int = 1, **psa_kwargs):
        super().__init__()
        if not concat_input:
            raise ValueError("psa head: concat_input must be true (PSANet concatenates c5 with its context)")
        self.inner_width("psa", channels, psa_kwargs)
        cin = int(in_channels[self.in_index])
        self.attention = PointwiseSpatialAttention(cin, inner_channels=channels, fuse=False,
                                                   proj_padding=proj_padding, **psa_kwargs)
        self.bottleneck = conv_bn_relu(2 * cin, channels, 3)
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.inputs(feats)
        return self.classify(self.bottleneck(torch.cat([x, self.attention.context(x)], dim=1)))
