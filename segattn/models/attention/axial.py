"""Axial attention (Ho et al., "Axial Attention in Multidimensional Transformers", 2019; Wang et al.,
"Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", ECCV 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int
from .record import Recorder
from .registry import BN_REMOVES, SOFTMAX_SHIFT, register


class AxialAttention1d(nn.Module):
    """One axis of csrhddlam/axial-deeplab's ``AxialAttention`` (stride 1, in = out channels).

    Every column (``width=False``) or row (``width=True``) is a sequence of length L. A 1x1 conv1d
    (no bias) + BN1d gives per head (``groups`` heads of g = C / groups channels) queries and keys of
    g / 2 channels and values of g. The logits are q_i.k_j + q_i.r^q_{i-j} + k_j.r^k_{j-i}, each of the
    three terms through its own channels of one BN2d (``bn_similarity``, 3 x groups), summed, no
    scaling; softmax over j; the output sum_j a_ij v_j and sum_j a_ij r^v_{i-j} go through one BN1d
    (``bn_output``, 2C channels) and are added. r^q, r^k, r^v are rows of one learned table
    ``relative`` (2g, 2 * span - 1); the official code builds its index for L == kernel_size only, here
    offsets beyond span - 1 use the last entry (clipped).
    """

    def __init__(self, channels: int, groups: int, span: int, width: bool):
        super().__init__()
        self.channels, self.groups, self.span, self.width = channels, groups, span, width
        self.group_planes = channels // groups
        self.qkv_transform = nn.Conv1d(channels, channels * 2, 1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(channels * 2)
        self.bn_similarity = nn.BatchNorm2d(groups * 3)
        self.bn_output = nn.BatchNorm1d(channels * 2)
        self.relative = nn.Parameter(torch.empty(self.group_planes * 2, span * 2 - 1))
        # the official reset_parameters
        nn.init.normal_(self.qkv_transform.weight, 0, math.sqrt(1.0 / channels))
        nn.init.normal_(self.relative, 0, math.sqrt(1.0 / self.group_planes))

    def embeddings(self, length: int) -> torch.Tensor:
        """(2g, L, L): entry [:, i, j] is ``relative[:, clip(i - j) + span - 1]``."""
        pos = torch.arange(length, device=self.relative.device)
        offset = (pos[:, None] - pos[None, :]).clamp(1 - self.span, self.span - 1) + self.span - 1
        return self.relative[:, offset.reshape(-1)].view(self.group_planes * 2, length, length)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) -> (output (N, C, H, W), attention (N, groups, other axis, L, L))."""
        x = x.permute(0, 2, 1, 3) if self.width else x.permute(0, 3, 1, 2)  # (N, other, C, L)
        n, other, c, length = x.shape
        g, gp = self.groups, self.group_planes
        x = x.reshape(n * other, c, length)
        qkv = self.bn_qkv(self.qkv_transform(x)).reshape(n * other, g, gp * 2, length)
        q, k, v = torch.split(qkv, [gp // 2, gp // 2, gp], dim=2)
        q_emb, k_emb, v_emb = torch.split(self.embeddings(length), [gp // 2, gp // 2, gp], dim=0)
        qr = torch.einsum("bgci,cij->bgij", q, q_emb)
        kr = torch.einsum("bgci,cij->bgij", k, k_emb).transpose(2, 3)
        qk = torch.einsum("bgci,bgcj->bgij", q, k)
        logits = self.bn_similarity(torch.cat([qk, qr, kr], dim=1))
        attn = F.softmax(logits.view(n * other, 3, g, length, length).sum(dim=1), dim=3)
        sv = torch.einsum("bgij,bgcj->bgci", attn, v)
        sve = torch.einsum("bgij,cij->bgci", attn, v_emb)
        out = self.bn_output(torch.cat([sv, sve], dim=-1).reshape(n * other, c * 2, length))
        out = out.view(n, other, c, 2, length).sum(dim=-2)  # (N, other, C, L)
        out = out.permute(0, 2, 1, 3) if self.width else out.permute(0, 2, 3, 1)
        return out, attn.view(n, other, g, length, length)


@register("axial")
class AxialAttention(Recorder, nn.Module):
    """Axial-DeepLab's pair of axial-attention layers (``AxialBlock.hight_block`` then ``width_block``):
    multi-head self-attention along each column, then along each row, with relative positions for
    queries, keys and values (see ``AxialAttention1d``). C -> C; every output position gathers from
    its whole row and, through it, from every column: the whole map in two 1-D steps.

    As a registered mechanism it is the two layers alone (the AxialBlock's 1x1 convs, ReLU and
    residual are the generic head's reduce / project / concat). ``span``: the relative positions
    learned each way (the paper's kernel size; 65 here covers a 65-long axis, a 513 x 513 crop at
    output stride 8); farther positions share the outermost entry.
    """

    # Survey (Guo et al. 2022): self-attention (matrix products of queries and keys, applied to the values
    # by a matrix product) over the spatial positions, one axis at a time.
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    # The similarity BN's shift is one constant per head over a row's logits; the height layer's output BN
    # shift is a per-channel constant that the width layer's qkv BatchNorm removes (segattn/check.py).
    grad_exempt = {"height_block.bn_similarity.bias": SOFTMAX_SHIFT, "width_block.bn_similarity.bias": SOFTMAX_SHIFT,
                   "height_block.bn_output.bias": BN_REMOVES}
    paper = "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation (2020)"
    reference = "csrhddlam/axial-deeplab lib/models/axialnet.py `AxialAttention`"
    deviations = ("relative positions beyond span - 1 clip to the outermost entry (the official index exists for "
                  "L == kernel_size only); the registered module is the height and width layers without AxialBlock's "
                  "convs, ReLU and residual")

    def __init__(self, channels: int, groups: int = 8, span: int = 65):
        super().__init__()
        groups, span = positive_int(groups, "axial: groups"), positive_int(span, "axial: span")
        if channels % groups or (channels // groups) % 2:
            raise ValueError(f"axial: channels={channels} must split into groups={groups} heads of an even width")
        self.channels, self.groups, self.span = channels, groups, span
        self.height_block = AxialAttention1d(channels, groups, span, width=False)
        self.width_block = AxialAttention1d(channels, groups, span, width=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, a_h = self.height_block(x)
        out, a_w = self.width_block(out)
        if self.recording:
            # head-averaged: columns (N, W, H, H) and rows (N, H, W, W)
            self.record(height=a_h.mean(2), width=a_w.mean(2), size=tuple(x.shape[-2:]))
        return out

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """Where (y, x) gathers from (head-averaged): ``composed`` (the row step after the column step:
        weight of (y', x') = width[y][x, x'] * height[x'][y, y'], sums to 1), ``height`` (its column step
        alone, on column x) and ``width`` (its row step, on row y)."""
        h, w = self.recorded["size"]
        a_h = self.recorded["height"][index].float()  # (W, H, H)
        a_w = self.recorded["width"][index].float()  # (H, W, W)
        composed = a_h[:, y, :].t() * a_w[y, x][None, :]  # (H, W)
        height = torch.zeros(h, w, device=a_h.device)
        height[:, x] = a_h[x, y]
        width = torch.zeros(h, w, device=a_w.device)
        width[y, :] = a_w[y, x]
        return {"composed": composed, "height": height, "width": width}
