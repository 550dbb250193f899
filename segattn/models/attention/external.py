"""External attention (Guo et al., "Beyond Self-attention: External Attention using Two Linear Layers for
Visual Tasks", 2021)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int
from .record import Recorder
from .registry import SOFTMAX_SHIFT, register


@register("external")
class ExternalAttention(Recorder, nn.Module):
    """The authors' ``External_attention`` (EANet's segmentation module).

    The positions attend to S learned memory units instead of to each other: A = M_k x (a 1x1 conv1d,
    ``linear_0``), normalised twice (the "double normalisation", Sec. 3.2): a softmax over the positions,
    then each position's weights divided by their sum over the units (+ 1e-9); the output is M_v A
    (``linear_1``). Around it: a 1x1 conv with bias (``conv1``) before, a 1x1 conv + BN (``conv2``) after,
    the residual and a ReLU. Linear in the number of positions, and the memories are shared by all images.

    The start is the authors': convolutions N(0, 2 / (k^2 C_out)), BN 1 / 0, and M_v = M_k^T, both
    N(0, 2 / C). The authors' code makes ``linear_1``'s weight a view of ``linear_0``'s storage, so the
    two stay transposes of each other through training; here they are two parameters, the paper's two
    memories, equal only at the start.
    """

    # Survey (Guo et al. 2022) lists it with the spatial attentions: the attention is a product of the features
    # with a learned memory (matmul), applied as a product with a second memory (matmul), over positions.
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    # conv1's bias reaches the memory's logits as one constant per memory unit (segattn/check.py)
    grad_exempt = {"conv1.bias": SOFTMAX_SHIFT}
    paper = "Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks (2021)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "MenghaoGuo/EANet `External_attention` (External-Attention-pytorch `ExternalAttention`)"
    deviations = ("M_v and M_k are two parameters (the authors' code shares their storage, so M_v stays M_k^T "
                  "in training), equal at the start")

    def __init__(self, channels: int, memory_units: int = 64):
        super().__init__()
        self.channels = int(channels)
        self.memory_units = positive_int(memory_units, "external: memory_units")
        self.conv1 = nn.Conv2d(self.channels, self.channels, 1)
        self.linear_0 = nn.Conv1d(self.channels, self.memory_units, 1, bias=False)
        self.linear_1 = nn.Conv1d(self.memory_units, self.channels, 1, bias=False)
        self.conv2 = nn.Sequential(nn.Conv2d(self.channels, self.channels, 1, bias=False), nn.BatchNorm2d(self.channels))
        for conv in (self.conv1, self.conv2[0]):
            nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / self.channels))  # 1x1: n = k^2 C_out = C
        with torch.no_grad():
            # The authors' init loop draws linear_0, then linear_1 (N(0, 2 / C)) into the storage they share.
            memory = torch.randn(self.memory_units, self.channels) * math.sqrt(2.0 / self.channels)
            self.linear_0.weight.copy_(memory[:, :, None])
            self.linear_1.weight.copy_(memory.t()[:, :, None])

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The doubly normalised (N, S, HW) attention of the positions of ``x`` (after ``conv1``) to the units."""
        attn = F.softmax(self.linear_0(x.flatten(2)), dim=-1)
        return attn / (1e-9 + attn.sum(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        attn = self.attention(self.conv1(x))
        if self.recording:
            self.record(attn=attn.reshape(n, -1, h, w), size=(h, w))
        return F.relu(self.conv2(self.linear_1(attn).reshape(n, c, h, w)) + x)

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """How much each position draws on the memory: ``mean`` over the units (each unit's map is a
        distribution over the positions before the second normalisation), then ``unit<s>`` per unit, (H, W)."""
        attn = self.recorded["attn"][index]
        return {"mean": attn.mean(0), **{f"unit{s}": a for s, a in enumerate(attn)}}
