"""Point-wise spatial attention (Zhao et al., "PSANet: Point-wise Spatial Attention Network for
Scene Parsing", ECCV 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int, positive_ints
from ..layers import conv_bn_relu
from .record import Recorder, spread
from .registry import register

_PSA_TYPES = ("collect", "distribute", "bi-direction")


def _mask_size(mask_size) -> tuple[int, int]:
    return positive_ints(mask_size, "psa: mask_size", length=2, hint=" (h, w)")


def psa_mask(mask: torch.Tensor, psa_type: str, mask_size: Sequence[int]) -> torch.Tensor:
    """Pure-PyTorch equivalent of the official ``psamask`` op (hszhao/semseg, mmcv ``PSAMask``).

    ``mask`` is (N, mask_h * mask_w, H, W): for every position i = (h, w) an over-complete
    mask of logits centred on i. The op crops, for each i, the part of its mask that overlaps
    the feature map and lays it out as an (N, HW, H, W) attention map A with
    - collect:    A[n, j, i] = mask[n, offset(j - i), i]  (i gathers from every j),
    - distribute: A[n, i, j] = mask[n, offset(j - i), i]  (i sends to every j),
    i.e. distribute is the transpose of collect over the two HW axes. offset(dy, dx) =
    (dy + half_h) * mask_w + (dx + half_w) with half = (mask - 1) // 2.

    Where a mask does not reach (|dy| or |dx| beyond it, on maps larger than the mask's
    ``half + 1``), A is zero, exactly as the official op leaves it; the softmax that follows in
    PSANet then treats those pairs as logits of 0, as the released models were trained (mmseg
    trains its 512x1024 Cityscapes recipe, 32x64 attention grids against a 49x49 reach, so).
    Every mask covers its own centre, so any positive mask size works on any map.
    Vectorised as one ``gather`` with an (HW, HW) index, no loop over pixels.
    """
    if psa_type not in ("collect", "distribute"):
        raise ValueError(f"psa_mask: psa_type must be 'collect' or 'distribute', got {psa_type!r}")
    mask_h, mask_w = _mask_size(tuple(mask_size))
    n, k, h, w = mask.shape
    if k != mask_h * mask_w:
        raise ValueError(f"psa_mask: expected {mask_h}*{mask_w}={mask_h * mask_w} mask channels, got {k}")
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    ys = torch.arange(h, device=mask.device)
    xs = torch.arange(w, device=mask.device)
    dy = ys[:, None] - ys[None, :] + half_h  # [source row, centre row]
    dx = xs[:, None] - xs[None, :] + half_w  # [source col, centre col]
    index = (dy.clamp(0, mask_h - 1)[:, None, :, None] * mask_w + dx.clamp(0, mask_w - 1)[None, :, None, :])
    # out[n, j, i] = mask[n, index[j, i], i], zero where i's mask does not reach j
    out = mask.reshape(n, k, h * w).gather(1, index.reshape(h * w, h * w).expand(n, -1, -1))
    # Offsets run over -(size - 1) .. size - 1; the mask holds -half .. mask - 1 - half.
    if h - 1 > min(half_h, mask_h - 1 - half_h) or w - 1 > min(half_w, mask_w - 1 - half_w):
        reach = ((dy >= 0) & (dy < mask_h))[:, None, :, None] & ((dx >= 0) & (dx < mask_w))[None, :, None, :]
        out = out.masked_fill(~reach.reshape(1, h * w, h * w), 0.0)
    if psa_type == "distribute":
        out = out.transpose(1, 2)
    return out.reshape(n, h * w, h, w)


def shrunk_grid(h: int, w: int, shrink_factor: int) -> tuple[int, int, bool]:
    """The attention grid of an (h, w) map and its resize mode, mmsegmentation's ``PSAHead`` rule:
    when neither side divides by the factor (the 8k+1 crops, e.g. 769 -> 97) the corners stay aligned,
    ``(h - 1) // s + 1`` with ``align_corners=True``; otherwise ``h // s`` with ``align_corners=False``
    (512x1024 crops: 64x128 features -> 32x64)."""
    s = shrink_factor
    if s == 1:
        return h, w, False
    if h % s and w % s:
        return (h - 1) // s + 1, (w - 1) // s + 1, True
    return h // s, w // s, False


@register("psa")
class PointwiseSpatialAttention(Recorder, nn.Module):
    """The official ``PSA`` module (hszhao/semseg ``model/psanet.py``, mmseg ``PSAHead``'s body).

    Each branch (collect, distribute) reduces the input with a 1x1 conv+BN+ReLU to
    ``inner_channels`` (the official 2048 -> 512; C // 2 by default), predicts a ``mask_size``
    over-complete mask per position with conv1x1+BN+ReLU then conv1x1, crops it to an HW x HW
    attention map (``psa_mask``: zeros where the mask does not reach), softmaxes it over the
    source positions (``psa_softmax``) and aggregates the reduced feature with it, divided by
    ``normalization_factor`` (1.0 as in the official code and mmseg; ``None`` uses the mask area
    mask_h * mask_w, also as there). ``psa_type`` picks one branch or both ('bi-direction', the
    paper's best). The branches' outputs are concatenated and projected back to C with
    conv1x1+BN+ReLU (``proj``); :meth:`context` returns that, resized to the input.

    ``shrink_factor`` (2, official and mmseg) computes the attention on a smaller grid
    (:func:`shrunk_grid`) and resizes the context back.

    PSANet concatenates its input with the context (2C channels) and its head goes on with a 3x3
    conv (``segattn.models.heads.psa.PSAHead``, built with ``fuse=False``). To keep the registry's C -> C contract for
    other uses, the module alone fuses the concatenation back to C with a 1x1 conv+BN+ReLU
    (``fuse``). (The ``compact`` variant of the official code, whose mask is exactly HW x HW for
    one fixed input size, is left out: it ties the model to one crop size.)
    """

    # Survey: convolution-computed weights applied as an HW x HW matrix product, over the
    # spatial positions.
    taxonomy = dict(weights="conv", applied="matmul", domain="spatial")
    paper = "PSANet: Point-wise Spatial Attention Network for Scene Parsing (2018)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `PSAHead` + mmcv `PSAMask` (its CPU kernel)"
    deviations = "the registered module alone fuses cat(x, context) back to C; `proj_padding: 1` is mmseg's (hszhao/semseg: 0)"

    # Export limits (segattn.deploy): format -> why only at a fixed size; tests/test_deploy.py checks them.
    export_static_only = dict.fromkeys(
        ("torchscript", "exported_program", "onnx"),
        "PSANet's shrink rule branches on odd/even feature sides and its mask reaches a fixed feature size "
        "(97x97: inputs up to 792 px at output stride 8)")

    def __init__(
        self,
        channels: int,
        inner_channels: int | None = None,
        psa_type: str = "bi-direction",
        mask_size: Sequence[int] | int = (97, 97),
        shrink_factor: int = 2,
        normalization_factor: float | None = 1.0,
        psa_softmax: bool = True,
        fuse: bool = True,
        proj_padding: int = 0,
    ):
        super().__init__()
        if inner_channels is None:
            inner_channels = max(1, channels // 2)
        inner_channels = positive_int(inner_channels, "psa: inner_channels")
        if psa_type not in _PSA_TYPES:
            raise ValueError(f"psa: psa_type must be one of {_PSA_TYPES}, got {psa_type!r}")
        shrink_factor = positive_int(shrink_factor, "psa: shrink_factor")
        self.mask_size = _mask_size(tuple(mask_size) if not isinstance(mask_size, int) else mask_size)
        if normalization_factor is None:
            normalization_factor = self.mask_size[0] * self.mask_size[1]
        if not normalization_factor > 0:
            raise ValueError(f"psa: normalization_factor must be > 0 or None, got {normalization_factor!r}")
        self.channels = channels
        self.inner_channels = int(inner_channels)
        self.psa_type = psa_type
        self.shrink_factor = int(shrink_factor)
        self.normalization_factor = float(normalization_factor)
        self.psa_softmax = bool(psa_softmax)

        ci, area = self.inner_channels, self.mask_size[0] * self.mask_size[1]
        self.branches = ("collect", "distribute") if psa_type == "bi-direction" else (psa_type,)
        self.reduce = nn.ModuleDict({b: conv_bn_relu(channels, ci, 1) for b in self.branches})
        self.attention = nn.ModuleDict(
            {b: nn.Sequential(conv_bn_relu(ci, ci, 1), nn.Conv2d(ci, area, 1, bias=False)) for b in self.branches}
        )
        if int(proj_padding) != proj_padding or proj_padding < 0:
            raise ValueError(f"psa: proj_padding must be a non-negative integer, got {proj_padding!r}")
        self.proj = conv_bn_relu(ci * len(self.branches), channels, 1, padding=int(proj_padding))
        self.fuse = conv_bn_relu(2 * channels, channels, 1) if fuse else None

    def attention_map(self, feat: torch.Tensor, branch: str) -> torch.Tensor:
        """The (N, HW, HW) map A of ``branch`` for a reduced feature; out = feat @ A (sources on dim 1)."""
        n, _, h, w = feat.shape
        a = psa_mask(self.attention[branch](feat), branch, self.mask_size).view(n, h * w, h * w)
        return a.softmax(dim=1) if self.psa_softmax else a

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """The paper's two masks of position i = (y, x): ``collect``, the weights i gathers the
        other positions with (column i of A, sums to one), and ``distribute``, the weights i's
        feature enters the other positions with (row i of A; each receiver's weights sum to one).

        The attention runs on the shrunk grid: (y, x) asks its nearest cell there (under the
        resize's own alignment), and a cell's weight is shared by the input positions nearest to it.
        """
        (h, w), (sh, sw) = self.recorded["size"], self.recorded["grid_size"]
        align = self.recorded["align_corners"]

        def nearest(size: int, small: int) -> torch.Tensor:
            pos = torch.arange(size, dtype=torch.float64)
            src = pos * ((small - 1) / max(size - 1, 1)) if align else (pos + 0.5) * (small / size) - 0.5
            return (src + 0.5).floor().long().clamp(0, small - 1)

        rows, cols = nearest(h, sh), nearest(w, sw)
        i = int(rows[y]) * sw + int(cols[x])
        maps = {}
        for branch in self.branches:
            a = self.recorded[branch][index]
            m = (a[:, i] if branch == "collect" else a[i, :]).view(sh, sw)
            maps[branch] = spread(m, rows, cols) if (sh, sw) != (h, w) else m
        return maps

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The projected (C-channel) context of both branches, at the input's size."""
        n, _, h, w = x.shape
        sh, sw, align = shrunk_grid(h, w, self.shrink_factor)
        if self.recording:
            self.record(size=(h, w), grid_size=(sh, sw), align_corners=align)
        outs = []
        for branch in self.branches:
            feat = self.reduce[branch](x)
            if (sh, sw) != (h, w):
                feat = F.interpolate(feat, size=(sh, sw), mode="bilinear", align_corners=align)
            attention = self.attention_map(feat, branch)
            if self.recording:
                self.record(**{branch: attention})
            agg = torch.bmm(feat.flatten(2), attention)
            outs.append(agg.view(n, self.inner_channels, sh, sw) / self.normalization_factor)
        out = self.proj(torch.cat(outs, dim=1))
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=align)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.context(x)
        return self.fuse(torch.cat([x, out], dim=1)) if self.fuse is not None else out
