"""Dynamic multi-scale filters (He et al., "Dynamic Multi-scale Filters for Semantic Segmentation", ICCV 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int, positive_ints
from ..layers import conv_bn_relu
from .record import Recorder
from .registry import register


class DCM(nn.Module):
    """One dynamic convolutional module (paper Sec. 3.2, mmseg ``DCM``) with k x k filters.

    The image's content, average-pooled to k x k and turned into C' channels by a 1x1 conv
    (``filter_gen_conv``), is a depth-wise k x k filter per image and channel; it convolves the
    1x1-reduced input (``input_redu_conv``), then BN and ReLU (and a 1x1 conv-BN-ReLU with
    ``fusion``). An even k pads one more row and column before than after, as mmseg does.
    """

    def __init__(self, filter_size: int, in_channels: int, channels: int, fusion: bool = False):
        super().__init__()
        self.filter_size = filter_size
        self.filter_gen_conv = nn.Conv2d(in_channels, channels, 1)  # a plain conv: PyTorch's start, as mmseg
        self.input_redu_conv = conv_bn_relu(in_channels, channels, 1)
        self.norm = nn.BatchNorm2d(channels)
        self.fusion_conv = conv_bn_relu(channels, channels, 1) if fusion else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.filter_size
        filters = self.filter_gen_conv(F.adaptive_avg_pool2d(x, k))  # (N, C', k, k)
        x = self.input_redu_conv(x)
        n, c, h, w = x.shape
        pad = (k - 1) // 2
        pads = (pad, pad, pad, pad) if (k - 1) % 2 == 0 else (pad + 1, pad, pad + 1, pad)
        # Every (image, channel) pair is a group of its own: one grouped convolution over the batch.
        out = F.conv2d(F.pad(x.reshape(1, n * c, h, w), pads), filters.reshape(n * c, 1, k, k), groups=n * c)
        out = F.relu(self.norm(out.reshape(n, c, h, w)))
        return self.fusion_conv(out) if self.fusion_conv is not None else out


@register("dm")
class DynamicMultiScale(Recorder, nn.Module):
    """DMNet's dynamic convolutional modules at several filter sizes (1, 3, 5, 7), mmseg ``DMHead``'s body.

    :meth:`context` is the input concatenated with every DCM's output (C + S * C' channels), what
    DMNet's bottleneck reads (``DMHead``, built with ``fuse=False``). To keep the registry's C -> C
    contract for other uses, the module alone fuses that back to C with a 1x1 conv-BN-ReLU (``fuse``).
    ``inner_channels``: the DCMs' width (C // 4 by default; the recipe's 2048 -> 512).
    """

    # The filters are computed from pooled context by a 1x1 convolution (pool+conv) and applied by convolving
    # the features: a weighted sum over each position's k x k neighbours (matmul), per channel and position.
    taxonomy = dict(weights="pool+conv", applied="matmul", domain="spatial+channel")
    paper = "Dynamic Multi-scale Filters for Semantic Segmentation (2019)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `DMHead` (`DCM`)"
    deviations = "the registered module alone fuses cat(x, DCM outputs) back to C"

    # Export limits (segattn.deploy): format -> why only at a fixed size; tests/test_deploy.py checks them.
    export_static_only = {"onnx": "ONNX has no adaptive average pooling, and a convolution's group count (one per "
                                  "image and channel here) is fixed: the exporter fixes both for the export size"}

    def __init__(self, channels: int, filter_sizes: Sequence[int] = (1, 3, 5, 7), inner_channels: int | None = None,
                 fusion: bool = False, fuse: bool = True):
        super().__init__()
        inner_channels = max(1, channels // 4) if inner_channels is None else inner_channels
        self.channels, self.inner_channels = int(channels), positive_int(inner_channels, "dm: inner_channels")
        self.filter_sizes = positive_ints(filter_sizes, "dm: filter_sizes")
        self.dcm_modules = nn.ModuleList(DCM(k, self.channels, self.inner_channels, bool(fusion))
                                         for k in self.filter_sizes)
        width = self.channels + len(self.filter_sizes) * self.inner_channels
        self.fuse = conv_bn_relu(width, self.channels, 1) if fuse else None

    def context(self, x: torch.Tensor) -> torch.Tensor:
        outs = [dcm(x) for dcm in self.dcm_modules]
        if self.recording:
            self.record(size=tuple(x.shape[-2:]), **{f"filter_{k}": o.mean(dim=1) for k, o in zip(self.filter_sizes, outs)})
        return torch.cat([x, *outs], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse is None:
            raise RuntimeError("dm: built with fuse=False (inside DMHead): call context(x)")
        return self.fuse(self.context(x))

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """Per filter size k, the DCM's response averaged over its channels (H, W): where the filters that
        this image's content generated respond."""
        return {f"filter_{k}": self.recorded[f"filter_{k}"][index] for k in self.filter_sizes}
