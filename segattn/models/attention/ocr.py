"""Object-contextual representations (Yuan et al., "Object-Contextual Representations for Semantic
Segmentation", ECCV 2020), as mmseg's ``OCRHead`` in its ``CascadeEncoderDecoder`` recipe."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import conv_bn_relu
from .record import Recorder
from .registry import register


def spatial_gather(feats: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg ``SpatialGatherModule`` (scale 1): each of the K soft regions (softmax of its logits over
    the positions) averages the features: -> (region representations (N, C, K), region masks (N, K, HW))."""
    masks = F.softmax(regions.flatten(2), dim=2)  # (N, K, HW)
    return torch.matmul(masks, feats.flatten(2).transpose(1, 2)).transpose(1, 2), masks


@register("ocr")
class ObjectContext(Recorder, nn.Module):
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
        super().__init__()
        ocr_channels = max(1, channels // 2) if ocr_channels is None else ocr_channels
        if isinstance(ocr_channels, bool) or int(ocr_channels) != ocr_channels or ocr_channels < 1:
            raise ValueError(f"ocr: ocr_channels must be a positive integer, got {ocr_channels!r}")
        if num_regions is not None and (isinstance(num_regions, bool) or int(num_regions) != num_regions
                                        or num_regions < 1):
            raise ValueError(f"ocr: num_regions must be a positive integer or null, got {num_regions!r}")
        self.channels, self.ocr_channels = channels, int(ocr_channels)
        self.region = None if num_regions is None else nn.Conv2d(channels, int(num_regions), 1)
        c = self.ocr_channels
        self.query_project = nn.Sequential(conv_bn_relu(channels, c, 1), conv_bn_relu(c, c, 1))
        self.key_project = nn.Sequential(conv_bn_relu(channels, c, 1), conv_bn_relu(c, c, 1))
        self.value_project = conv_bn_relu(channels, c, 1)
        self.out_project = conv_bn_relu(c, channels, 1)
        self.bottleneck = conv_bn_relu(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor, regions: Optional[torch.Tensor] = None) -> torch.Tensor:
        if regions is None:
            if self.region is None:
                raise ValueError("ocr: this block has no region estimate of its own; pass the region logits")
            regions = self.region(x)
        n, _, h, w = x.shape
        context, masks = spatial_gather(x, regions)  # (N, C, K)
        context = context.unsqueeze(3)  # (N, C, K, 1), mmseg's layout
        query = self.query_project(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        key = self.key_project(context).flatten(2)  # (N, C', K)
        value = self.value_project(context).flatten(2).transpose(1, 2)  # (N, K, C')
        sim = F.softmax(torch.matmul(query, key) * self.ocr_channels ** -0.5, dim=-1)  # (N, HW, K)
        if self.recording:
            self.record(attention=sim, regions=masks, size=(h, w))
        obj = torch.matmul(sim, value).transpose(1, 2).reshape(n, -1, h, w)
        return self.bottleneck(torch.cat([self.out_project(obj), x], dim=1))

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
