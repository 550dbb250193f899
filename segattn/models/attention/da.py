"""Dual attention (Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ...ops import attention_row, check_impl, fused_attention, positive_int
from .record import Recorder
from .registry import SOFTMAX_SHIFT, register


class PositionAttention(Recorder, nn.Module):
    """DANet's ``PAM_Module`` (Sec. 3.2): E = gamma * V softmax(Q^T K)^T + X over the HW positions.

    Query and key are 1x1 convolutions to C // reduction channels (C/8 in the official code),
    the value keeps C; no scaling of the logits, as in the official code (``scale`` 1 for the fused
    kernel). gamma starts at zero so the module is the identity at initialisation and "gradually
    learns to assign more weight". ``impl="fused"`` never holds S (HW x HW): it runs the kernel of
    ``fused_attention``; ``impl="explicit"`` computes S as the official code does.
    """

    grad_exempt = {"key_conv.bias": SOFTMAX_SHIFT}  # segattn/check.py

    def __init__(self, channels: int, reduction: int = 8, impl: str = "fused"):
        super().__init__()
        self.impl = check_impl("da", impl)
        self.key_channels = max(1, channels // reduction)
        self.query_conv = nn.Conv2d(channels, self.key_channels, 1)
        self.key_conv = nn.Conv2d(channels, self.key_channels, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        # mmseg builds the three projections as ConvModules: Kaiming normal (fan_out), zero bias.
        for conv in (self.query_conv, self.key_conv, self.value_conv):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.gamma = nn.Parameter(torch.zeros(1))

    def embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys, (N, HW, C') each."""
        return self.query_conv(x).flatten(2).transpose(1, 2), self.key_conv(x).flatten(2).transpose(1, 2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """S of the paper's Eq. 1 as (N, HW, HW): row i is pixel i's distribution over positions
        (the explicit form)."""
        query, key = self.embeddings(x)
        return torch.bmm(query, key.transpose(1, 2)).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = self.value_conv(x).flatten(2)  # (N, C, HW)
        query, key = self.embeddings(x)
        if self.recording:
            self.record(query=query, key=key, size=tuple(x.shape[-2:]))
        if self.impl == "explicit":
            attention = torch.bmm(query, key.transpose(1, 2)).softmax(dim=-1)
            out = torch.bmm(value, attention.transpose(1, 2))
        else:
            out = fused_attention(query, key, value.transpose(1, 2), scale=1.0).transpose(1, 2)
        return self.gamma * out.reshape(x.shape) + x

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """Row (y, x) of S: where that position gathers its features from (sums to one), computed
        from the recorded queries and keys."""
        h, w = self.recorded["size"]
        row = attention_row(self.recorded["query"][index], self.recorded["key"][index], y * w + x, scale=1.0)
        return {"position": row.view(h, w)}


class ChannelAttention(Recorder, nn.Module):
    """DANet's ``CAM_Module`` (Sec. 3.3): E = gamma * softmax(X X^T) X + X over the C channels.

    As in the official code, the softmax is taken over rowmax(X X^T) - X X^T rather than X X^T:
    subtracting from the row maximum turns "most similar" into the smallest logit, and the
    released models were trained that way (the paper's Eq. 3 writes plain X X^T). No convolutions
    are used, to keep the relationship between the original channel maps (Sec. 3.3).
    """

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, C) channel attention map X of the paper's Eq. 3 (rows sum to one)."""
        # X X^T sums over all HW positions (~9.4k at a 97x97 map) and overflows float16 under
        # AMP, so the channel energies are always computed in (at least) float32.
        # (Devices without autocast, e.g. the meta device shape checks run on, have nothing to turn off.)
        no_autocast = (torch.autocast(device_type=x.device.type, enabled=False)
                       if torch.amp.is_autocast_available(x.device.type) else contextlib.nullcontext())
        with no_autocast:
            feats = x.flatten(2)
            if feats.dtype in (torch.float16, torch.bfloat16):
                feats = feats.float()
            energy = torch.bmm(feats, feats.transpose(1, 2))
            energy_new = energy.amax(dim=-1, keepdim=True) - energy
            return energy_new.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.attention(x)
        if self.recording:
            self.record(attention=attention)
        out = torch.bmm(attention.to(x.dtype), x.flatten(2))
        return self.gamma * out.view_as(x) + x

    def channel_matrix(self, index: int = 0) -> torch.Tensor:
        """The recorded (C, C) map: row i is channel i's distribution over the channels."""
        return self.recorded["attention"][index]


@register("da")
class DualAttention(Recorder, nn.Module):
    """DANet's two branches on one input, fused by summation: PAM(x) + CAM(x).

    In DANet each branch has its own 3x3 conv before and after it and the two are summed at the
    end (Sec. 3.4, element-wise sum); this module is the mechanism alone, so it sums the two modules'
    outputs directly (2x at initialisation, both gammas being zero). DANet's head (``segattn.models.heads.da``) uses the
    branches ``pam`` and ``cam`` separately, as the paper's head does.
    """

    # Survey (Guo et al. 2022): 矩阵乘法 叉乘 空间域, 通道域 (matrix-product weights applied as a matrix product,
    # an HW x HW map for positions and a C x C map for channels).
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial+channel")
    paper = "Dual Attention Network for Scene Segmentation (2019)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `DAHead`; junfu1115/DANet `PAM_Module`, `CAM_Module`"
    deviations = "the registered module alone sums PAM and CAM; the head keeps DANet's convs per branch"

    def __init__(self, channels: int, reduction: int = 8, impl: str = "fused"):
        super().__init__()
        self.channels = int(channels)
        self.pam = PositionAttention(self.channels, positive_int(reduction, "da: reduction"), impl)
        self.cam = ChannelAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pam(x) + self.cam(x)

    # The branches record (DAHead calls them one by one); these read them back.
    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        return self.pam.attention_maps(y, x, index)

    def channel_matrix(self, index: int = 0) -> torch.Tensor:
        return self.cam.channel_matrix(index)
