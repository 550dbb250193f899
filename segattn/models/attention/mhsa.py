"""Transformer encoder layer over pixels (Vaswani et al., "Attention Is All You Need", NeurIPS 2017)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import attention_row, check_impl, positive_int
from .record import Recorder
from .registry import SOFTMAX_SHIFT, register


def sinusoidal_encoding_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """The paper's Sec. 3.5 encoding, (len(positions), dim): PE(p, 2i) = sin(p / 10000^(2i/dim)),
    PE(p, 2i+1) = cos(p / 10000^(2i/dim)). An odd ``dim`` keeps the last sine channel."""
    pair = torch.arange(dim, device=positions.device) // 2
    inv_freq = torch.exp(-math.log(10000.0) * (2 * pair).to(torch.float32) / dim)
    angle = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    even = (torch.arange(dim, device=positions.device) % 2 == 0)[None, :]
    return torch.where(even, torch.sin(angle), torch.cos(angle))


def sinusoidal_encoding_2d(channels: int, height: int, width: int, device=None) -> torch.Tensor:
    """A (channels, height, width) 2-D extension of the paper's encoding: the first
    ``channels // 2`` channels encode the row index, the rest the column index (the split used by
    Image Transformer and DETR), each with the 1-D formula, for any height and width."""
    c_y = channels // 2
    c_x = channels - c_y
    pe_y = sinusoidal_encoding_1d(torch.arange(height, device=device), c_y)  # (H, c_y)
    pe_x = sinusoidal_encoding_1d(torch.arange(width, device=device), c_x)  # (W, c_x)
    return torch.cat(
        [
            pe_y.t()[:, :, None].expand(c_y, height, width),
            pe_x.t()[:, None, :].expand(c_x, height, width),
        ],
        dim=0,
    )


@register("mhsa")
class MultiHeadSelfAttention(Recorder, nn.Module):
    """One Transformer encoder layer (Sec. 3.1) whose tokens are the H*W pixels.

    x' = x + PE (Sec. 3.5, added once at the input as the paper adds it to the embeddings);
    z = LayerNorm(x' + MultiHead(x', x', x')); out = LayerNorm(z + FFN(z)) - the two sub-layers
    with their "Add & Norm" (post-norm, as in the paper). MultiHead projects to ``num_heads``
    heads of d_k = C / num_heads, runs scaled dot-product attention softmax(QK^T / sqrt(d_k)) V in
    each (Eq. 1) and concatenates them through W^O. The FFN is max(0, xW1 + b1)W2 + b2 (Eq. 2)
    with inner width ``ffn_ratio * C`` (the paper's d_ff = 4 d_model = 2048 for d_model = 512).

    ``residual_dropout`` is the paper's P_drop = 0.1 (Sec. 5.4): on each sub-layer output before
    the residual addition and on the sum of input and positional encoding. It is separate from the
    head's ``dropout`` before the classifier. ``pos_encoding=False`` removes PE, which makes the
    layer equivariant to permuting the pixels (an ablation; the paper needs PE for word order).
    ``impl="fused"`` runs Eq. 1 through ``F.scaled_dot_product_attention`` (no L x L matrix);
    ``impl="explicit"`` computes softmax(QK^T / sqrt(d_k)) per head as written (the reference).
    """

    # Survey (Guo et al. 2022): 矩阵乘法 叉乘 空间域 (weights from Q K^T, applied as an HW x HW matrix product with V,
    # over the spatial positions).
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    grad_exempt = {"key.bias": SOFTMAX_SHIFT}  # segattn/check.py
    paper = "Attention Is All You Need (2017)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "naive multi-head attention (no official segmentation code)"
    deviations = "a post-norm Transformer layer (2-D sinusoidal positions, FFN) as the mechanism"

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        ffn_ratio: float = 4.0,
        residual_dropout: float = 0.1,
        pos_encoding: bool = True,
        impl: str = "fused",
    ):
        super().__init__()
        channels = int(channels)
        num_heads = positive_int(num_heads, "mhsa: num_heads", divides=channels, hint=" (the channels)")
        if not ffn_ratio > 0 or int(round(channels * ffn_ratio)) < 1:
            raise ValueError(f"mhsa: ffn_ratio must be > 0 with ffn_ratio * channels >= 1, got {ffn_ratio!r}")
        if not 0.0 <= residual_dropout < 1.0:
            raise ValueError(f"mhsa: residual_dropout must be in [0, 1), got {residual_dropout!r}")
        self.channels = channels
        self.num_heads = int(num_heads)
        self.head_dim = channels // self.num_heads
        self.ffn_channels = int(round(channels * ffn_ratio))
        self.pos_encoding = bool(pos_encoding)
        self.impl = check_impl("mhsa", impl)

        # W^Q, W^K, W^V for all heads at once (each head is a slice of C / h channels), and W^O.
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(
            nn.Linear(channels, self.ffn_channels),
            nn.ReLU(inplace=True),
            nn.Linear(self.ffn_channels, channels),
        )
        self.norm2 = nn.LayerNorm(channels)
        self.drop = nn.Dropout(residual_dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Glorot-uniform projections with zero bias, as the reference tensor2tensor code and
        # torch.nn.MultiheadAttention initialise them.
        for lin in (self.query, self.key, self.value, self.out):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """MultiHead(x, x, x) for tokens x of shape (N, L, C)."""
        n, length, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if self.recording:
            # The queries and keys, (N, heads, L, d_k) each: ``attention_maps`` computes the rows asked for.
            self.record(query=q, key=k)
        if self.impl == "explicit":
            y = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1) @ v
        else:
            # The fused kernel computes softmax(QK^T / sqrt(d_k)) V without storing the L x L matrix.
            y = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, d_k)
        return self.out(y.transpose(1, 2).reshape(n, length, c))

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """Position (y, x)'s attention over the pixels: the mean over heads, then each head (the
        rows of softmax(QK^T / sqrt(d_k)), from the recorded queries and keys, in float32)."""
        h, w = self.recorded["size"]
        q, k = self.recorded["query"][index], self.recorded["key"][index]
        per_head = torch.stack([attention_row(q[i], k[i], y * w + x, self.head_dim**-0.5) for i in range(self.num_heads)])
        per_head = per_head.view(self.num_heads, h, w)
        return {"mean": per_head.mean(dim=0), **{f"head{i}": a for i, a in enumerate(per_head)}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.recording:
            self.record(size=(h, w))
        if self.pos_encoding:
            x = x + sinusoidal_encoding_2d(c, h, w, device=x.device).to(x.dtype)
        tokens = self.drop(x.flatten(2).transpose(1, 2))  # (N, HW, C)
        tokens = self.norm1(tokens + self.drop(self.attention(tokens)))
        tokens = self.norm2(tokens + self.drop(self.ffn(tokens)))
        return tokens.transpose(1, 2).reshape(n, c, h, w)
