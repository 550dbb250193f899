"""Criss-cross attention (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", TPAMI 2020)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .record import Recorder
from .registry import register


@register("cc")
class CrissCrossAttention(Recorder, nn.Module):
    """CCNet's ``CrissCrossAttention``, applied ``recurrence`` times with shared weights (RCCA).

    Each pixel u attends to the H + W - 1 pixels of its own row and column (Sec. 3.2): the
    affinities d_{i,u} = Q_u^T Omega_{i,u} of the column and of the row go through ONE softmax
    together, and the pixel itself is counted once because, as in the official pure-PyTorch code,
    the diagonal of the column term is masked with -inf. The output is
    H'_u = gamma * sum_i A_{i,u} Phi_{i,u} + H_u with gamma initialised to zero, so every
    recurrence starts as the identity.

    ``recurrence`` R: the paper's RCCA (Sec. 3.3) applies the same module twice (R = 2) so that
    information from every pixel reaches every other; R = 1 sees only the criss-cross path.
    ``reduction``: query and key have C // reduction channels (C/8 in the paper and code),
    the value keeps C.

    Memory is O(N HW (H+W)): the row and column affinities are computed with einsum, never as an
    HW x HW matrix (the paper's point against the non-local block).
    """

    # Survey (Guo et al. 2022): 矩阵乘法 叉乘 空间 (weights from Q K products, applied as a matrix product with V over
    # the positions of the row and column).
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "CCNet: Criss-Cross Attention for Semantic Segmentation (2020)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `CCHead` + mmcv `CrissCrossAttention`; speedinghzl/CCNet (pure PyTorch)"

    def __init__(self, channels: int, recurrence: int = 2, reduction: int = 8):
        super().__init__()
        if int(recurrence) != recurrence or int(recurrence) < 1:
            raise ValueError(f"cc: recurrence must be a positive integer, got {recurrence!r}")
        if int(reduction) != reduction or int(reduction) < 1:
            raise ValueError(f"cc: reduction must be a positive integer, got {reduction!r}")
        self.channels = int(channels)
        self.recurrence = int(recurrence)
        # max(1, ...) as mmcv: a layer narrower than the reduction still gets a one-channel key.
        self.key_channels = max(1, self.channels // int(reduction))
        self.query_conv = nn.Conv2d(self.channels, self.key_channels, 1)
        self.key_conv = nn.Conv2d(self.channels, self.key_channels, 1)
        self.value_conv = nn.Conv2d(self.channels, self.channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The criss-cross attention of one pass: (column part (N, H, W, H), row part (N, H, W, W)).

        For pixel (h, w), ``col[n, h, w, g]`` weights pixel (g, w) and ``row[n, h, w, v]`` weights
        pixel (h, v); together they sum to one, and ``col[..., h, w, h]`` is zero (self counted once,
        in the row part).
        """
        h = x.shape[2]
        q = self.query_conv(x)
        k = self.key_conv(x)
        energy_col = torch.einsum("nchw,ncgw->nhwg", q, k)
        energy_row = torch.einsum("nchw,nchv->nhwv", q, k)
        self_mask = torch.eye(h, dtype=torch.bool, device=x.device).view(1, h, 1, h)
        energy_col = energy_col.masked_fill(self_mask, float("-inf"))
        att = torch.cat([energy_col, energy_row], dim=-1).softmax(dim=-1)
        return att[..., :h], att[..., h:]

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross pass (the official module's forward)."""
        att_col, att_row = self.attention(x)
        if self.recording:
            self.recorded.setdefault("passes", []).append((att_col.detach(), att_row.detach()))
        v = self.value_conv(x)
        out = torch.einsum("nhwg,ncgw->nchw", att_col, v) + torch.einsum("nhwv,nchv->nchw", att_row, v)
        return self.gamma * out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recording:
            self.record(size=tuple(x.shape[-2:]), passes=[])
        for _ in range(self.recurrence):
            x = self.step(x)
        return x

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """Where pixel (y, x) gathers from: ``composed`` over all recurrences, then each pass's own
        criss-cross map (``pass1``, ...).

        Pass r mixes positions by its attention A_r (row-stochastic, HW x HW but non-zero only on
        each pixel's row and column), so after R passes pixel u has gathered from e_u^T A_R ... A_1
        (the values' convolutions and the residual aside): with R = 2 every pixel reaches every
        other, the paper's argument for the recurrence. Composed here one pass at a time on an
        (H, W) distribution, never as an HW x HW matrix.
        """
        h, w = self.recorded["size"]
        passes = [(col[index].float(), row[index].float()) for col, row in self.recorded["passes"]]

        def through(d: torch.Tensor, col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
            # d^T A: each position p hands d[p] to its column (col[p]) and its row (row[p]).
            return torch.einsum("gw,gwa->aw", d, col) + torch.einsum("hv,hvb->hb", d, row)

        composed = passes[0][0].new_zeros(h, w)
        composed[y, x] = 1.0
        for col, row in reversed(passes):
            composed = through(composed, col, row)
        own = {}
        for r, (col, row) in enumerate(passes, 1):
            d = col.new_zeros(h, w)
            d[y, x] = 1.0
            own[f"pass{r}"] = through(d, col, row)
        return {"composed": composed, **own}
