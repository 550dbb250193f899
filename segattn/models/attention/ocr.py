"""Object-contextual representations (Yuan et al., "Object-Contextual Representations for Semantic
Segmentation", ECCV 2020), as mmseg's ``OCRHead`` in its ``CascadeEncoderDecoder`` recipe."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int
from ..layers import conv_bn_relu
from .record import Recorder
from .registry import register
from .self_attention import SelfAttentionBlock


def spatial_gather(feats: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg ``SpatialGatherModule`` (scale 1): each of the K soft regions (softmax of its logits over
    the positions) averages the features: -> (region representations (N, C, K), region masks (N, K, HW))."""
    masks = F.softmax(regions.flatten(2), dim=2)  # (N, K, HW)
    return torch.matmul(masks, feats.flatten(2).transpose(1, 2)).transpose(1, 2), masks


@register("ocr")
class ObjectContext(Recorder, SelfAttentionBlock):
    """OCR's object attention (mmseg ``ObjectAttentionBlock``, scale 1, with ``SpatialGatherModule``):
    the K soft object regions gather region representations from x; each pixel attends over the K regions
    (queries from x and keys from the regions through two 1x1 conv-BN-ReLU each, the value and output
    projections one 1x1 conv-BN-ReLU each, logits * ocr_channels^-0.5, softmax over the regions); the
    object context, concatenated with x, through a 1x1 conv-BN-ReLU back to C.

    ``regions`` (N, K, H, W) are the soft-region logits; OCRHead passes its FCN's predictions on c4.
    Used alone as a C -> C block (the registry contract) it estimates them itself with a 1x1 conv to
    ``num_regions`` (19 by default). ``ocr_channels``: the key / query / value width (C // 2 by default).
    """

    # Survey (Guo et al. 2022): attention by matrix products of pixel queries and region keys, applied by a
    # matrix product over the object regions (a class-level spatial context).
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "Object-Contextual Representations for Semantic Segmentation (2020)"
    reference = ("mmseg `OCRHead` (`SpatialGatherModule`, `ObjectAttentionBlock`) after an `FCNHead` "
                 "(`CascadeEncoderDecoder`)")
    deviations = ("scale fixed at 1 (mmseg's recipe: no query down-sampling); the registered C -> C module "
                  "estimates its soft regions with its own 1x1 conv (the head uses the region FCN on c4); "
                  "the ocr recipes set model.aux_head.weight=0, since the region FCN on c4 (loss weight 0.4) is "
                  "mmseg's only other head")

    def __init__(self, channels: int, ocr_channels: int | None = None, num_regions: int | None = 19):
        ocr_channels = positive_int(max(1, channels // 2) if ocr_channels is None else ocr_channels, "ocr: ocr_channels")
        num_regions = positive_int(num_regions, "ocr: num_regions", null=True)
        # mmseg's ObjectAttentionBlock: two conv-BN-ReLU for keys and queries, conv-BN-ReLU value and output
        super().__init__(channels, channels, ocr_channels, channels, key_query_num_convs=2, value_out_norm=True)
        self.channels, self.ocr_channels = channels, ocr_channels
        self.region = None if num_regions is None else nn.Conv2d(channels, num_regions, 1)
        self.bottleneck = conv_bn_relu(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor, regions: Optional[torch.Tensor] = None) -> torch.Tensor:
        if regions is None:
            if self.region is None:
                raise ValueError("ocr: this block has no region estimate of its own; pass the region logits")
            regions = self.region(x)
        context, masks = spatial_gather(x, regions)  # (N, C, K)
        # keys and values from the regions as (N, C, K, 1), mmseg's layout; the embeddings are not kept
        obj, weights = self.attend(x, context.unsqueeze(3))[:2]
        if self.recording:
            self.record(attention=weights, regions=masks, size=tuple(x.shape[-2:]))
        return self.bottleneck(torch.cat([obj, x], dim=1))

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """The pixel-region relation of position (y, x): ``gathered``, where it gathers from through the
        regions (sum over k of its weight on region k times region k's soft mask; sums to one), then each
        region's soft mask, strongest weight first, as ``region_<k>_<weight>``."""
        h, w = self.recorded["size"]
        weights = self.recorded["attention"][index, y * w + x]  # (K,)
        masks = self.recorded["regions"][index].view(-1, h, w)  # (K, H, W)
        maps = {"gathered": torch.einsum("k,khw->hw", weights, masks)}
        for k in torch.argsort(weights, descending=True).tolist():
            maps[f"region_{k}_{weights[k].item():.2f}"] = masks[k]
        return maps
