"""Convolutional Block Attention Module (Woo et al., "CBAM", ECCV 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import positive_int
from .record import GatedChannels, Recorder
from .registry import register


class ChannelGate(GatedChannels, nn.Module):
    """CBAM's channel attention (Eq. 2): sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))).

    One MLP is shared by both descriptors (the paper's "shared network"); biases as in the
    official ``ChannelGate``.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        logits = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return torch.sigmoid(logits).view(n, c, 1, 1)


class SpatialGate(Recorder, nn.Module):
    """CBAM's spatial attention (Eq. 3): sigmoid(conv7x7([MaxPool_c(F); AvgPool_c(F)])).

    The paper writes conv -> sigmoid; the official ``SpatialGate`` is ``BasicConv(2, 1, 7,
    relu=False)``, i.e. a bias-free conv followed by BatchNorm. We keep the BN: the two
    channel-pooled maps' magnitudes change a lot from one backbone stage (or one head) to another,
    and the BN puts the 7x7 conv's logits on a scale where the sigmoid is not saturated from the
    first iteration; it is also what the released ImageNet numbers were trained with.
    The descriptor order [max, mean] follows the official ``ChannelPool``.
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        # The official BasicConv's BN: momentum 0.01 (PyTorch's default is 0.1).
        self.bn = nn.BatchNorm2d(1, momentum=0.01)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial map in (0, 1), shape (N, 1, H, W): one value per position for all channels."""
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate(x)
        if self.recording:
            self.record(gate=gate, size=tuple(x.shape[-2:]))
        return x * gate

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        return {"spatial": self.recorded["gate"][index, 0]}


@register("cbam", block=True)
class CBAM(Recorder, nn.Module):
    """Channel gate, then spatial gate, applied in sequence (the paper's best order, Table 3)."""

    # Survey (Guo et al. 2022): 全连接 点乘 空间域 通道域. The channel weights come from an MLP and the spatial ones from
    # a 7x7 conv, both multiplied element-wise.
    taxonomy = dict(weights="mlp+conv", applied="elementwise", domain="channel+spatial")
    paper = "CBAM: Convolutional Block Attention Module (2018)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "Jongchan/attention-module `CBAM`"

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        reduction = positive_int(reduction, "cbam: reduction")
        kernel_size = positive_int(kernel_size, "cbam: kernel_size", odd=True, hint=" (paper: 7)")
        self.channel_gate = ChannelGate(int(channels), reduction)
        self.spatial_gate = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_gate(self.channel_gate(x))

    # The two gates record themselves; these read them back.
    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        return self.spatial_gate.spatial_maps(index)

    def gate_values(self) -> dict[str, torch.Tensor]:
        return self.channel_gate.gate_values()
