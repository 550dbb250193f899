"""Global context block (Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks
and Beyond", ICCVW 2019)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .record import Recorder
from .registry import SOFTMAX_SHIFT, register

_FUSIONS = ("channel_add", "channel_mul")


def _transform(channels: int, planes: int) -> nn.Sequential:
    # The GC block's bottleneck transform: 1x1 conv -> LayerNorm -> ReLU -> 1x1 conv. The paper adds
    # LayerNorm (over [planes, 1, 1]) because the two-layer bottleneck is harder to optimise.
    return nn.Sequential(
        nn.Conv2d(channels, planes, 1),
        nn.LayerNorm([planes, 1, 1]),
        nn.ReLU(inplace=True),
        nn.Conv2d(planes, channels, 1),
    )


@register("gc", block=True)
class ContextBlock(Recorder, nn.Module):
    """The official ``ContextBlock``: context modelling, transform, fusion (paper Fig. 4d).

    Context modelling (``pooling_type='att'``) is attention pooling: a 1x1 conv W_k gives one
    logit per pixel, a softmax over all H*W pixels turns them into weights, and the context is
    the weighted sum of the features - the query-independent simplification of the non-local
    block. ``'avg'`` replaces it with global average pooling (the SE-like ablation).
    The transform is a bottleneck of width ``int(C * ratio)`` (ratio 1/4 for the segmentation
    recipe and the paper's default).
    Fusion ``channel_add`` broadcasts the transformed context to every pixel (out = x + T(c));
    ``channel_mul`` rescales channels (out = x * sigmoid(T(c))); both can be listed, as in the
    official code (multiply first, then add).
    Initialisation follows the official ``reset_parameters``: Kaiming (fan-in) for W_k and a
    zero last conv in each transform, so ``channel_add`` starts as the identity. (With
    ``channel_mul`` the zero last conv gives sigmoid(0) = 0.5, i.e. x / 2 at the start, as there.)
    """

    # Survey (Guo et al. 2022): 卷积 叉乘 空间？ 加 通道. The weights come from a 1x1 convolution + softmax over
    # positions (conv); they are applied by a matrix product [C, HW] x [HW, 1] (attention pooling)
    # and the result is added to every position (matmul+add); the softmax weights live in the
    # spatial domain and the added term is one value per channel (spatial+channel).
    taxonomy = dict(weights="conv", applied="matmul+add", domain="spatial+channel")
    paper = "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond (2019)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `GCHead` + mmcv `ContextBlock`; xvjiarui/GCNet `ContextBlock`"

    # The head's facts (segattn.models.heads.registry.head_facts; this mechanism uses the generic head).
    # mmsegmentation 1.x single-scale val mIoU, R50-D8 / R101-D8, Cityscapes 512x1024, 80k iterations
    published = {"r50_d8_cityscapes_80k": 78.48, "r101_d8_cityscapes_80k": 79.03}
    mmseg_params = 23_738_260  # mmseg's GCHead at the recipe's widths, 19 classes

    def __init__(
        self,
        channels: int,
        ratio: float = 0.25,
        pooling_type: str = "att",
        fusion_types: tuple[str, ...] | list[str] | str = ("channel_add",),
    ):
        super().__init__()
        channels = int(channels)
        planes = int(channels * ratio)
        if not ratio > 0 or planes < 1:
            raise ValueError(
                f"gc: ratio must be > 0 with int(channels * ratio) >= 1 (channels={channels}), got {ratio!r}"
            )
        if pooling_type not in ("att", "avg"):
            raise ValueError(f"gc: pooling_type must be 'att' or 'avg', got {pooling_type!r}")
        if isinstance(fusion_types, str):
            fusion_types = (fusion_types,)
        fusion_types = tuple(fusion_types)
        if not fusion_types or any(f not in _FUSIONS for f in fusion_types):
            raise ValueError(
                f"gc: fusion_types must be a non-empty subset of {_FUSIONS}, got {fusion_types!r}"
            )
        self.channels = channels
        self.ratio = ratio
        self.planes = planes
        self.pooling_type = pooling_type
        self.fusion_types = fusion_types

        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(channels, 1, 1)
            self.grad_exempt = {"conv_mask.bias": SOFTMAX_SHIFT}  # the pooling softmax (segattn/check.py)
        self.channel_add_conv = _transform(channels, planes) if "channel_add" in fusion_types else None
        self.channel_mul_conv = _transform(channels, planes) if "channel_mul" in fusion_types else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.pooling_type == "att":
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is not None:
                nn.init.zeros_(transform[-1].weight)
                nn.init.zeros_(transform[-1].bias)

    def spatial_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention-pooling weights, (N, HW), summing to one over the positions."""
        return self.conv_mask(x).flatten(1).softmax(dim=1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The global context vector, (N, C, 1, 1)."""
        n, c = x.shape[:2]
        if self.pooling_type == "avg":
            if self.recording:
                self.record(pooling=x.new_full((n, x.shape[2] * x.shape[3]), 1.0 / (x.shape[2] * x.shape[3])))
            return x.mean(dim=(2, 3), keepdim=True)
        weights = self.spatial_weights(x)  # (N, HW)
        if self.recording:
            self.record(pooling=weights)
        return torch.bmm(x.flatten(2), weights.unsqueeze(-1)).view(n, c, 1, 1)

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The attention-pooling weights as an (H, W) map, the same for every query (the point of GC)."""
        h, w = self.recorded["size"]
        return {"pooling": self.recorded["pooling"][index].view(h, w)}

    def gate_values(self) -> dict[str, torch.Tensor]:
        """``channel_mul``'s (N, C) gates; none for ``channel_add`` alone (it adds, nothing to gate)."""
        return {"channel_mul": self.recorded["channel_mul"]} if "channel_mul" in self.recorded else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recording:
            self.record(size=tuple(x.shape[-2:]))
        context = self.context(x)
        out = x
        if self.channel_mul_conv is not None:
            gate = torch.sigmoid(self.channel_mul_conv(context))
            if self.recording:
                self.record(channel_mul=gate.flatten(1))
            out = out * gate
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out
