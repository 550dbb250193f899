"""Interlaced sparse self-attention (Huang et al., "Interlaced Sparse Self-Attention for Semantic
Segmentation", 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import attention_row, check_impl, positive_int, positive_ints
from ..layers import conv_bn_relu
from .record import Recorder
from .registry import VALUE_CONSTANT, register
from .self_attention import SelfAttentionBlock


class RelationBlock(SelfAttentionBlock):
    """One dense self-attention over a group of positions, mmseg ``ISAHead``'s ``SelfAttentionBlock``:
    query and key are two 1x1 conv-BN-ReLU layers each (C -> C' -> C'), the value a plain 1x1 conv
    (C -> C, with bias), logits / sqrt(C'), softmax over the group, and the context goes through a
    1x1 conv-BN-ReLU (``output_project``). No residual: ISA's head concatenates its input instead."""

    grad_exempt = {"value_project.bias": VALUE_CONSTANT}  # output_project's BN removes it (segattn/check.py)

    def __init__(self, channels: int, key_channels: int):
        super().__init__(channels, channels, key_channels, channels, key_query_num_convs=2, with_out=False)
        self.output_project = conv_bn_relu(channels, channels, 1)

    def forward(self, x: torch.Tensor, impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (G, C, h, w), one group of positions per batch entry -> (context, queries, keys)."""
        attended = self.attend(x, x, impl)
        return self.output_project(attended.context), attended.query, attended.key


@register("isa")
class InterlacedSparseSelfAttention(Recorder, nn.Module):
    """ISA's two factorised attentions (paper Sec. 3.2, mmseg ``ISAHead``'s forward).

    The map is padded (zeros, split evenly between the two sides) to a multiple of ``down_factor``
    (P_h, P_w) = (8, 8) and cut into blocks of P_h x P_w. The *long-range* step attends among the
    positions that sit at the same place in every block (a grid of Q_h x Q_w = H/P_h x W/P_w
    positions spaced P apart: the interlacing), the *short-range* step among the P_h x P_w positions of
    each block; every position then carries information from all the others through two sparse maps
    of (HW/P)^2 and P^2 entries instead of one HW x HW. Padding is cropped at the end. Each step is a
    ``RelationBlock`` with ``key_channels`` query/key channels (mmseg's ``isa_channels``, 256 in the
    recipe; C // 2 by default). ``impl``: ``fused`` runs each step through ``fused_attention`` (no
    attention map held), ``explicit`` builds the two maps.
    """

    # Survey (Guo et al. 2022): self-attention factorised into two sparse affinity matrices (matmul), each applied
    # by a matrix product with the values (matmul), over the spatial positions (spatial).
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "Interlaced Sparse Self-Attention for Semantic Segmentation (2019)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `ISAHead` (+ mmseg `SelfAttentionBlock`)"

    # Export limits (segattn.deploy): format -> why only at a fixed size; tests/test_deploy.py checks them.
    export_static_only = dict.fromkeys(
        ("exported_program", "onnx"),
        "ISA pads the map to whole down_factor blocks (ceil(H / 8) * 8 - H rows), a derived size torch.export "
        "cannot keep symbolic: it specialises the input to multiples of 64 px")

    def __init__(self, channels: int, key_channels: int | None = None, down_factor: Sequence[int] | int = (8, 8),
                 impl: str = "fused"):
        super().__init__()
        self.down_factor = positive_ints(down_factor, "isa: down_factor", length=2, hint=" (P_h, P_w)")
        key_channels = positive_int(max(1, channels // 2) if key_channels is None else key_channels, "isa: key_channels")
        self.channels, self.key_channels = int(channels), key_channels
        self.impl = check_impl("isa", impl)
        self.global_relation = RelationBlock(self.channels, self.key_channels)
        self.local_relation = RelationBlock(self.channels, self.key_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        loc_h, loc_w = self.down_factor
        glb_h, glb_w = (h + loc_h - 1) // loc_h, (w + loc_w - 1) // loc_w
        pad_h, pad_w = glb_h * loc_h - h, glb_w * loc_w - w
        top, left = pad_h // 2, pad_w // 2
        # Always padded and cropped (a no-op at multiples of P): one graph for every size when exported.
        x = F.pad(x, (left, pad_w - left, top, pad_h - top))
        # long range: the positions at the same offset (i, j) of every block
        x = x.view(n, c, glb_h, loc_h, glb_w, loc_w).permute(0, 3, 5, 1, 2, 4).reshape(n * loc_h * loc_w, c, glb_h, glb_w)
        x, q_long, k_long = self.global_relation(x, self.impl)
        # short range: the positions of one block
        x = x.view(n, loc_h, loc_w, c, glb_h, glb_w).permute(0, 4, 5, 3, 1, 2).reshape(n * glb_h * glb_w, c, loc_h, loc_w)
        x, q_short, k_short = self.local_relation(x, self.impl)
        x = x.view(n, glb_h, glb_w, c, loc_h, loc_w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, glb_h * loc_h, glb_w * loc_w)
        if self.recording:
            self.record(q_long=q_long, k_long=k_long, q_short=q_short, k_short=k_short, size=(h, w),
                        grid=(glb_h, glb_w), offset=(top, left))
        return x[:, :, top:top + h, left:left + w]

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """The two sparse rows of position (y, x) on the input grid: ``long_range``, its weights over
        the positions at the same offset in every block (zero elsewhere), and ``short_range``, its
        weights over its own block. Weights that fell on the padding are cut off with it."""
        (h, w), (glb_h, glb_w), (top, left) = self.recorded["size"], self.recorded["grid"], self.recorded["offset"]
        loc_h, loc_w = self.down_factor
        py, px = y + top, x + left
        gi, li, gj, lj = py // loc_h, py % loc_h, px // loc_w, px % loc_w
        scale = self.key_channels ** -0.5
        g = (index * loc_h + li) * loc_w + lj
        long_row = attention_row(self.recorded["q_long"][g], self.recorded["k_long"][g], gi * glb_w + gj, scale)
        g = (index * glb_h + gi) * glb_w + gj
        short_row = attention_row(self.recorded["q_short"][g], self.recorded["k_short"][g], li * loc_w + lj, scale)
        full = long_row.new_zeros(2, glb_h * loc_h, glb_w * loc_w)
        full[0, li::loc_h, lj::loc_w] = long_row.view(glb_h, glb_w)
        full[1, gi * loc_h:(gi + 1) * loc_h, gj * loc_w:(gj + 1) * loc_w] = short_row.view(loc_h, loc_w)
        full = full[:, top:top + h, left:left + w]
        return {"long_range": full[0], "short_range": full[1]}
