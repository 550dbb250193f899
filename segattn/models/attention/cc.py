"""Criss-cross attention (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", TPAMI 2020)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import check_impl, positive_int
from .record import Recorder
from .registry import SOFTMAX_SHIFT, register


def criss_cross_weights(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One joint softmax over each pixel's column and row affinities (N, H, W, H) and (N, H, W, W),
    the pixel itself counted once (the column term's diagonal is masked, as the official code)."""
    h = q.shape[2]
    energy_col = torch.einsum("nchw,ncgw->nhwg", q, k)
    energy_col.masked_fill_(torch.eye(h, dtype=torch.bool, device=q.device).view(1, h, 1, h), float("-inf"))
    energy = torch.cat([energy_col, torch.einsum("nchw,nchv->nhwv", q, k)], dim=-1)
    del energy_col
    if energy.dtype in (torch.float16, torch.bfloat16):  # the softmax in float32, as autocast runs it
        att = energy.float().softmax(dim=-1).to(energy.dtype)
    else:
        att = energy.softmax(dim=-1)
    return att[..., :h], att[..., h:]


def _aggregate(col: torch.Tensor, row: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_i A_{i,u} v_i over u's column and row: (N, C, H, W)."""
    out = torch.einsum("nhwg,ncgw->nchw", col, v)
    return out.add_(torch.einsum("nhwv,nchv->nchw", row, v))


# Value channels per slice: the fused pass computes the value projection, its aggregation and their
# gradients a slice of channels at a time, so that neither the C-channel value map nor its row and
# column aggregations exist whole (each is one more HW x C map, 18.4 MiB at 512 x 97 x 97).
_SLICE = 64


def _slices(channels: int) -> list[slice]:
    return [slice(i, min(i + _SLICE, channels)) for i in range(0, channels, _SLICE)]


def _criss_cross_pass(x, wq, bq, wk, bk, wv, bv, gamma) -> torch.Tensor:
    """x + gamma * CC(x): one criss-cross pass with the module's weights, as plain tensor ops."""
    col, row = criss_cross_weights(F.conv2d(x, wq, bq), F.conv2d(x, wk, bk))
    out = None
    for sl in _slices(wv.shape[0]):
        part = _aggregate(col, row, F.conv2d(x, wv[sl], bv[sl]))
        if out is None:
            out = part.new_empty(x.shape[0], wv.shape[0], *x.shape[2:])
        out[:, sl] = part
        del part
    del col, row
    if out.dtype == torch.promote_types(x.dtype, gamma.dtype):
        return out.mul_(gamma).add_(x)  # the same operations as gamma * out + x, without two more maps
    return gamma * out + x


class CrissCrossPass(torch.autograd.Function):
    """One criss-cross pass that saves only its input (and the weights) for backward.

    Autograd through the einsum form keeps the value map, the joint affinities and the row and
    column aggregations of every pass (CCNet's pure-PyTorch code does too); CCNet's CUDA
    extension keeps just its inputs. Here backward recomputes q, k, v (three 1x1 convolutions)
    and the H + W - 1 affinities per pixel from x, and applies the softmax, aggregation and
    convolution backward by hand, so a training step holds no more than one pass's maps at a time.
    """

    @staticmethod
    def forward(ctx, x, wq, bq, wk, bk, wv, bv, gamma):
        ctx.save_for_backward(x, wq, bq, wk, bk, wv, bv, gamma)
        return _criss_cross_pass(x, wq, bq, wk, bk, wv, bv, gamma)

    @staticmethod
    def backward(ctx, grad):
        x, wq, bq, wk, bk, wv, bv, gamma = ctx.saved_tensors
        dtype = x.dtype  # backward runs outside autocast: everything in the input's dtype
        g = grad.to(dtype)
        wq_, wk_, wv_, bv_, gm = (t.to(dtype) for t in (wq, wk, wv, bv, gamma))
        q, k = F.conv2d(x, wq_, bq.to(dtype)), F.conv2d(x, wk_, bk.to(dtype))
        col, row = criss_cross_weights(q, k)
        n = x.shape[0]
        xs = x.flatten(2)
        dx = torch.zeros_like(xs)  # (N, C, HW): W^T d of the three 1x1 convolutions, then + g (residual)
        gwv, gbv = torch.empty_like(wv), torch.empty_like(bv)
        dcol = drow = None
        for sl in _slices(wv.shape[0]):
            v, gs = F.conv2d(x, wv_[sl], bv_[sl]), g[:, sl]
            # out = gamma * (A v): gradient of the weights A before gamma ...
            a, b = torch.einsum("nchw,ncgw->nhwg", gs, v), torch.einsum("nchw,nchv->nhwv", gs, v)
            dcol, drow = (a, b) if dcol is None else (dcol.add_(a), drow.add_(b))
            del v, a, b
            # ... and of the value slice, through its 1x1 convolution.
            dv = _aggregate_transposed(col, row, gs).mul_(gm).flatten(2)
            gwv[sl] = torch.einsum("nop,nip->oi", dv, xs).view_as(gwv[sl]).to(wv.dtype)
            gbv[sl] = dv.sum((0, 2)).to(bv.dtype)
            dx.baddbmm_(wv_[sl].flatten(1).t().expand(n, -1, -1), dv)
            del dv
        dgamma = (col * dcol).sum() + (row * drow).sum()
        # Softmax backward over the joint (column, row) weights: dE = A * (dA - sum_j A_j dA_j).
        dcol.mul_(gm)
        drow.mul_(gm)
        delta = (col * dcol).sum(-1, keepdim=True).add_((row * drow).sum(-1, keepdim=True))
        dcol.sub_(delta).mul_(col)  # the masked diagonal has A = 0, so its gradient is 0 too
        drow.sub_(delta).mul_(row)
        del col, row, delta
        dq = torch.einsum("nhwg,ncgw->nchw", dcol, k).add_(torch.einsum("nhwv,nchv->nchw", drow, k))
        dk = _aggregate_transposed(dcol, drow, q)
        del dcol, drow, q, k
        grads = []
        for d, w, w_, b in ((dq, wq, wq_, bq), (dk, wk, wk_, bk)):
            d = d.flatten(2)
            grads += [torch.einsum("nop,nip->oi", d, xs).view_as(w).to(w.dtype), d.sum((0, 2)).to(b.dtype)]
            dx.baddbmm_(w_.flatten(1).t().expand(n, -1, -1), d)
        dx = dx.view_as(x).add_(g)
        gq, gbq, gk, gbk = grads
        return dx.to(x.dtype), gq, gbq, gk, gbk, gwv, gbv, dgamma.reshape(gamma.shape).to(gamma.dtype)


def _aggregate_transposed(col: torch.Tensor, row: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A^T t: what each position receives from the pixels whose column and row it lies on, (N, C, H, W)."""
    out = torch.einsum("nhwg,nchw->ncgw", col, t)
    return out.add_(torch.einsum("nhwv,nchw->nchv", row, t))


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
    HW x HW matrix (the paper's point against the non-local block). ``impl="fused"`` (default)
    trains each pass through ``CrissCrossPass``, which saves only the pass's input and recomputes
    the rest in backward (as CCNet's CUDA extension, which the paper's 11x memory figure measured);
    ``impl="explicit"`` lets autograd keep every intermediate of the einsum form (the reference).
    """

    # Survey (Guo et al. 2022): 矩阵乘法 叉乘 空间 (weights from Q K products, applied as a matrix product with V over
    # the positions of the row and column).
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    grad_exempt = {"key_conv.bias": SOFTMAX_SHIFT}  # segattn/check.py
    paper = "CCNet: Criss-Cross Attention for Semantic Segmentation (2020)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `CCHead` + mmcv `CrissCrossAttention`; speedinghzl/CCNet (pure PyTorch)"

    # The head's facts (segattn.models.heads.registry.head_facts; this mechanism uses the generic head).
    # mmsegmentation 1.x single-scale val mIoU, R50-D8 / R101-D8, Cityscapes 512x1024, 80k iterations
    published = {"r50_d8_cityscapes_80k": 79.03, "r101_d8_cityscapes_80k": 78.87}
    mmseg_params = 23_934_100  # mmseg's CCHead at the recipe's widths, 19 classes

    def __init__(self, channels: int, recurrence: int = 2, reduction: int = 8, impl: str = "fused"):
        super().__init__()
        self.impl = check_impl("cc", impl)
        recurrence, reduction = positive_int(recurrence, "cc: recurrence"), positive_int(reduction, "cc: reduction")
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
        return criss_cross_weights(self.query_conv(x), self.key_conv(x))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross pass (the official module's forward)."""
        if self.recording:
            with torch.no_grad():
                self.recorded.setdefault("passes", []).append(tuple(a.detach() for a in self.attention(x)))
        weights = (self.query_conv.weight, self.query_conv.bias, self.key_conv.weight, self.key_conv.bias,
                   self.value_conv.weight, self.value_conv.bias, self.gamma)
        if self.impl == "explicit":
            att_col, att_row = self.attention(x)
            v = self.value_conv(x)
            out = torch.einsum("nhwg,ncgw->nchw", att_col, v) + torch.einsum("nhwv,nchv->nchw", att_row, v)
            return self.gamma * out + x
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *weights)):
            return CrissCrossPass.apply(x, *weights)
        return _criss_cross_pass(x, *weights)  # nothing to save: the same operations, no autograd node

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
