"""OCRNet's heads (Yuan et al., "Object-Contextual Representations for Semantic Segmentation", ECCV 2020),
as mmseg's ``OCRHead`` after an ``FCNHead`` in its ``CascadeEncoderDecoder`` recipe."""

from __future__ import annotations

import torch

from ..attention.ocr import ObjectContext
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .fcn import FCNHead
from .registry import register_head

_ALL_SETTINGS = ("r50_d8_cityscapes_80k", "r101_d8_cityscapes_80k", "r50_d8_ade20k_160k")


@register_head("ocr")
class OCRHead(BaseDecodeHead):
    """OCRNet's decode heads, as mmseg's ocrnet recipe (``CascadeEncoderDecoder``): an FCN on c4
    (``regions``: one 3x3 conv-BN-ReLU to ``region_channels``, dropout, classifier) predicts the soft
    object regions; on c5 a 3x3 conv-BN-ReLU to ``channels`` (``bottleneck``), the object context block
    with those regions, dropout, classifier. Returns {"out": logits, "regions": the region logits}, trained
    1.0 / 0.4 as mmseg. With the recipe (512 channels, ocr 256, region FCN 256, 19 classes) the part after
    the region FCN has mmseg's OCRHead parameter count, and the region FCN mmseg's FCNHead one."""

    loss_weights = {"out": 1.0, "regions": 0.4}
    # OCRNet: mmsegmentation publishes HRNet (and ResNet-101 with a different schedule) recipes only, no R50-D8 /
    # R101-D8 80k Cityscapes number. Its recipe has two decode heads: the region FCN on c4 (loss weight 0.4) is
    # the c4 FCN, so segattn's separate auxiliary head is off.
    recipe_extras = {s: {"model": {"aux_head": {"weight": 0}}} for s in _ALL_SETTINGS}
    # ocrnet: both cascade decode heads, OCRHead (10,632,211) + its region FCNHead (2,364,691)
    mmseg_params = 12_996_902

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512, dropout: float = 0.1,
                 ocr_channels: int = 256, region_channels: int = 256):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError("ocr head: needs the last two stages (c4 for the regions, c5)")
        # mmseg's FCNHead as the ocrnet recipe configures it: one 3x3 conv-BN-ReLU, no concatenation
        self.regions = FCNHead(in_channels, num_classes, channels=int(region_channels), num_convs=1,
                               concat_input=False, dropout=dropout, in_index=-2)
        self.bottleneck = conv_bn_relu(int(in_channels[self.in_index]), channels, 3)
        self.object_context = ObjectContext(channels, ocr_channels=ocr_channels, num_regions=None)
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        regions = self.regions(feats)
        x = self.object_context(self.bottleneck(self.inputs(feats)), regions)
        return {"out": self.classify(x), "regions": regions}
