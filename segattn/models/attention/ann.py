"""Asymmetric non-local blocks (Zhu et al., "Asymmetric Non-local Neural Networks for Semantic
Segmentation", ICCV 2019)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int, positive_ints
from ..layers import conv_bn_relu
from .record import Recorder
from .registry import BN_REMOVES, VALUE_CONSTANT, register
from .self_attention import SelfAttentionBlock


def pyramid_pool(x: torch.Tensor, scales: Sequence[int]) -> torch.Tensor:
    """mmseg ``PPMConcat``: adaptive average pooling to each s x s, flattened and concatenated: (N, C, sum s^2)."""
    return torch.cat([F.adaptive_avg_pool2d(x, s).flatten(2) for s in scales], dim=2)


class AsymmetricAttention(SelfAttentionBlock):
    """mmseg's ``SelfAttentionBlock`` as ANN builds it (ann_head.py): queries from ``query_feats``, keys and
    values from ``key_feats`` pyramid-pooled to sum s^2 positions (110 for (1, 3, 6, 8)) after their
    projections. Key / query projections are 1x1 conv-BN-ReLU (shared when ``share_key_query``, APNB),
    the value and the output projections plain 1x1 convs with bias, the output one zero-initialised
    (mmseg's ``init_weights``). Logits scaled by channels^-0.5, softmax over the pooled positions."""

    # The value's bias is a constant after the softmax, the output's one too, and the fusion / head conv after
    # the block normalises (segattn/check.py).
    grad_exempt = {"value_project.bias": VALUE_CONSTANT, "out_project.bias": BN_REMOVES}

    def __init__(self, key_in: int, query_in: int, channels: int, out_channels: int, share_key_query: bool,
                 key_pool_scales: Sequence[int]):
        scales = tuple(key_pool_scales)
        super().__init__(key_in, query_in, channels, out_channels, share_key_query,
                         key_downsample=functools.partial(pyramid_pool, scales=scales))
        self.key_pool_scales = scales


class AFNB(nn.Module):
    """Asymmetric fusion non-local block (mmseg ``AFNB``, query_scales (1,)): c5 (``high``) queries
    the pyramid-pooled c4 (``low``); the context, concatenated with c5, through a 1x1 conv-BN (no ReLU)."""

    def __init__(self, low_in: int, high_in: int, channels: int, out_channels: int, key_pool_scales):
        super().__init__()
        self.stages = nn.ModuleList([AsymmetricAttention(low_in, high_in, channels, out_channels, False,
                                                         key_pool_scales)])
        self.bottleneck = conv_bn_relu(out_channels + high_in, out_channels, 1, act=None)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        context = torch.stack([stage(high, low) for stage in self.stages]).sum(dim=0)
        return self.bottleneck(torch.cat([context, high], dim=1))


@register("ann")
class AsymmetricPyramidNonLocal(Recorder, nn.Module):
    """Asymmetric pyramid non-local block (ANN's APNB, mmseg ``APNB`` with query_scales (1,)): non-local
    attention whose keys and values are the projected map pooled to s x s for s in ``key_pool_scales``
    (1 + 9 + 36 + 64 = 110 positions instead of HW), key and query sharing one 1x1 conv-BN-ReLU; the
    context (zero at initialisation) concatenated with the input, 1x1 conv-BN-ReLU back to C.
    ``project_channels``: the key / query / value width (C // 2 by default; the recipe's 512 -> 256).
    """

    # Survey (Guo et al. 2022): non-local attention (matrix product of queries and keys, applied by a matrix
    # product) over the spatial positions, the keys pooled to a pyramid of regions.
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "Asymmetric Non-local Neural Networks for Semantic Segmentation (2019)"
    reference = "mmseg `ANNHead` (`AFNB`, `APNB`, `PPMConcat`)"
    deviations = "query_scales fixed at (1,) (mmseg's recipe; larger ones do not reshape back to a map in mmseg)"

    # Export limits (segattn.deploy): format -> why only at a fixed size; tests/test_deploy.py checks them.
    export_static_only = {"onnx": "ONNX has no adaptive average pooling: the exporter fixes ANN's pyramid-pooling "
                                  "windows (1, 3, 6, 8) for the export size"}

    def __init__(self, channels: int, project_channels: int | None = None,
                 key_pool_scales: Sequence[int] = (1, 3, 6, 8)):
        super().__init__()
        project_channels = max(1, channels // 2) if project_channels is None else project_channels
        self.channels, self.project_channels = channels, positive_int(project_channels, "ann: project_channels")
        self.key_pool_scales = positive_ints(key_pool_scales, "ann: key_pool_scales")
        self.stages = nn.ModuleList([AsymmetricAttention(channels, channels, self.project_channels, channels, True,
                                                         self.key_pool_scales)])
        self.bottleneck = conv_bn_relu(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [stage.attend(x, x)[:2] for stage in self.stages]  # (context, weights): embeddings not kept
        if self.recording:
            self.record(attention=outs[0][1], size=tuple(x.shape[-2:]))
        context = torch.stack([o[0] for o in outs]).sum(dim=0)
        return self.bottleneck(torch.cat([context, x], dim=1))

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """Per pooling scale s, the softmax weights of position (y, x) on the s x s regions, drawn on the
        input grid (each pixel shows the region floor(i * s / H), floor(j * s / W) it lies in). The weights
        of all scales' regions together sum to one."""
        h, w = self.recorded["size"]
        row = self.recorded["attention"][index, y * w + x]
        maps, start = {}, 0
        for s in self.key_pool_scales:
            part = row[start:start + s * s].view(s, s)
            start += s * s
            rows, cols = torch.arange(h) * s // h, torch.arange(w) * s // w
            maps[f"scale_{s}"] = part[rows.to(part.device)][:, cols.to(part.device)]
        return maps
