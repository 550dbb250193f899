"""Shuffle attention (Zhang and Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
ICASSP 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import positive_int
from .record import Recorder
from .registry import register


@register("shuffle", block=True)
class ShuffleAttention(Recorder, nn.Module):
    """The official ``sa_layer`` (wofmanaf/SA-Net), the same as External-Attention-pytorch's ``ShuffleAttention``.

    The C channels are cut into G groups and each group in two halves: the first gets a channel gate
    sigmoid(w_c * GAP(x) + b_c), the second a spatial gate sigmoid(w_s * GN(x) + b_s) (GroupNorm with one
    group per channel); the halves are concatenated and a channel shuffle of 2 mixes them between groups.
    The 4 x C / 2G scalars are shared by all groups; w starts at 0 and b at 1 (the official start, every
    gate sigmoid(1) at first). Named ``shuffle`` because ``sa`` is Squeeze-and-Attention.

    ``groups``: 8 by default, External-Attention-pytorch's default, which fits the narrow widths a head
    and the tests use (C must be a multiple of 2G); SA-Net's ResNets use 64 (a backbone of width 64:
    ``backbone.block_attention_kwargs.groups=64``).
    """

    # Both gates come from pooled statistics (GAP, GroupNorm) with per-channel scale and shift (pool), multiply
    # the features (elementwise), one per channel and one per position (channel+spatial).
    taxonomy = dict(weights="pool", applied="elementwise", domain="channel+spatial")
    paper = "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks (2021)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "wofmanaf/SA-Net `sa_layer` (External-Attention-pytorch `ShuffleAttention`)"
    deviations = "8 groups by default (External-Attention-pytorch's); SA-Net's ResNets use 64"

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.channels = int(channels)
        self.groups = positive_int(groups, "shuffle: groups")
        if self.channels % (2 * self.groups):
            raise ValueError(f"shuffle: channels={self.channels} must be a multiple of 2 * groups = {2 * self.groups} "
                             f"(each group is split in two halves); set groups to a divisor of {self.channels // 2}")
        half = self.channels // (2 * self.groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, -1, h, w)
        x_0, x_1 = x.chunk(2, dim=1)
        channel = torch.sigmoid(self.cweight * x_0.mean(dim=(2, 3), keepdim=True) + self.cbias)
        spatial = torch.sigmoid(self.sweight * self.gn(x_1) + self.sbias)
        if self.recording:
            self.record(channel=channel.reshape(b, -1), spatial=spatial.reshape(b, -1, h, w).mean(1), size=(h, w))
        out = torch.cat([x_0 * channel, x_1 * spatial], dim=1).reshape(b, -1, h, w)
        # channel shuffle with 2 groups: channel i of the first half next to channel i of the second
        return out.reshape(b, 2, -1, h, w).transpose(1, 2).reshape(b, -1, h, w)

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The spatial halves' gates averaged over their channels (H, W)."""
        return {"spatial": self.recorded["spatial"][index]}

    def gate_values(self) -> dict[str, torch.Tensor]:
        """The channel halves' gates (N, C / 2), group by group."""
        return {"channel": self.recorded["channel"]}
