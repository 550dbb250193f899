"""Point-wise spatial attention (Zhao et al., "PSANet: Point-wise Spatial Attention Network for
Scene Parsing", ECCV 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .record import Recorder, spread
from .registry import register

_PSA_TYPES = ("collect", "distribute", "bi-direction")


def _mask_size(mask_size) -> tuple[int, int]:
    if isinstance(mask_size, int):
        mask_size = (mask_size, mask_size)
    if (
        not isinstance(mask_size, Sequence)
        or len(mask_size) != 2
        or any(int(m) != m or m < 1 or m % 2 == 0 for m in mask_size)
    ):
        raise ValueError(f"psa: mask_size must be two odd positive integers (h, w), got {mask_size!r}")
    return int(mask_size[0]), int(mask_size[1])


def psa_mask(mask: torch.Tensor, psa_type: str, mask_size: Sequence[int]) -> torch.Tensor:
    """Pure-PyTorch equivalent of the official ``psamask`` op (hszhao/semseg, mmcv ``PSAMask``).

    ``mask`` is (N, mask_h * mask_w, H, W): for every position i = (h, w) an over-complete
    (2H-1) x (2W-1)-style mask of logits centred on i. The op crops, for each i, the part of its
    mask that overlaps the feature map and lays it out as an (N, HW, H, W) attention map A with
    - collect:    A[n, j, i] = mask[n, offset(j - i), i]  (i gathers from every j),
    - distribute: A[n, i, j] = mask[n, offset(j - i), i]  (i sends to every j),
    i.e. distribute is the transpose of collect over the two HW axes. offset(dy, dx) =
    (dy + half_h) * mask_w + (dx + half_w) with half = (mask - 1) // 2.

    The op leaves zeros where a mask does not reach; we instead require H <= half_h + 1 and
    W <= half_w + 1, where every mask covers the whole map, and raise ValueError otherwise,
    because those zeros would silently become softmax logits of 0.
    Vectorised as one ``gather`` with an (HW, HW) index, no loop over pixels.
    """
    if psa_type not in ("collect", "distribute"):
        raise ValueError(f"psa_mask: psa_type must be 'collect' or 'distribute', got {psa_type!r}")
    mask_h, mask_w = _mask_size(tuple(mask_size))
    n, k, h, w = mask.shape
    if k != mask_h * mask_w:
        raise ValueError(f"psa_mask: expected {mask_h}*{mask_w}={mask_h * mask_w} mask channels, got {k}")
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    if h > half_h + 1 or w > half_w + 1:
        raise ValueError(
            f"psa: mask_size={(mask_h, mask_w)} reaches features of at most {half_h + 1}x{half_w + 1} "
            f"at the attention resolution, got {h}x{w}; "
            f"use a mask_size of at least ({2 * h - 1}, {2 * w - 1})"
        )
    ys = torch.arange(h, device=mask.device)
    xs = torch.arange(w, device=mask.device)
    dy = ys[:, None] - ys[None, :] + half_h  # [source row, centre row]
    dx = xs[:, None] - xs[None, :] + half_w  # [source col, centre col]
    index = (dy[:, None, :, None] * mask_w + dx[None, :, None, :]).reshape(h * w, h * w)  # [j, i]
    # out[n, j, i] = mask[n, index[j, i], i]
    out = mask.reshape(n, k, h * w).gather(1, index.expand(n, -1, -1))
    if psa_type == "distribute":
        out = out.transpose(1, 2)
    return out.reshape(n, h * w, h, w)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register("psa")
class PointwiseSpatialAttention(Recorder, nn.Module):
    """The official ``PSA`` module (hszhao/semseg ``model/psanet.py``), kept as a C -> C map.

    Each branch (collect, distribute) reduces the input with a 1x1 conv+BN+ReLU to
    ``inner_channels`` (the official 2048 -> 512, here C // 2 by default since our input is the
    head's 512-channel feature), predicts a ``mask_size`` over-complete mask per position with
    conv1x1+BN+ReLU then conv1x1, crops it to an HW x HW attention map
    (``psa_mask``), softmaxes it over the source positions (``psa_softmax``) and aggregates the
    reduced feature with it, divided by ``normalization_factor`` (1.0 as in the official
    code and mmseg; ``None`` uses the mask area mask_h * mask_w, also as there). ``psa_type`` picks
    one branch or both ('bi-direction', the paper's best). The branches' outputs are concatenated
    and projected back to C with conv1x1+BN+ReLU (``proj``).

    ``shrink_factor`` (2, official and mmseg) computes the attention at ((H-1)//s+1, (W-1)//s+1)
    with align-corners bilinear resizing and resizes the result back, which is why the default
    mask (97, 97) reaches features up to 98x98 (e.g. a 769 crop at output stride 8 gives 97).
    Larger features raise ValueError naming ``mask_size``.

    The official module returns cat([x, proj]) (2C channels) and PSANet's classifier starts with
    a 3x3 conv over it. To keep the registry's C -> C contract, the concatenation is fused back to
    C with a 1x1 conv+BN+ReLU (``fuse``); the 3x3 conv that follows belongs to the head. (The
    ``compact`` variant of the official code, whose mask is exactly HW x HW for one fixed input
    size, is left out: it ties the model to one crop size.)
    """

    # Seed: 卷积 叉乘 空间域 (weights predicted by convolutions, applied as an HW x HW matrix
    # product, over the spatial positions).
    taxonomy = dict(weights="conv", applied="matmul", domain="spatial")
    paper = "PSANet: Point-wise Spatial Attention Network for Scene Parsing (2018)"

    def __init__(
        self,
        channels: int,
        inner_channels: int | None = None,
        psa_type: str = "bi-direction",
        mask_size: Sequence[int] | int = (97, 97),
        shrink_factor: int = 2,
        normalization_factor: float | None = 1.0,
        psa_softmax: bool = True,
    ):
        super().__init__()
        channels = int(channels)
        if channels < 1:
            raise ValueError(f"psa: channels must be >= 1, got {channels}")
        if inner_channels is None:
            inner_channels = max(1, channels // 2)
        if int(inner_channels) != inner_channels or int(inner_channels) < 1:
            raise ValueError(f"psa: inner_channels must be a positive integer, got {inner_channels!r}")
        if psa_type not in _PSA_TYPES:
            raise ValueError(f"psa: psa_type must be one of {_PSA_TYPES}, got {psa_type!r}")
        if int(shrink_factor) != shrink_factor or int(shrink_factor) < 1:
            raise ValueError(f"psa: shrink_factor must be a positive integer, got {shrink_factor!r}")
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
        self.reduce = nn.ModuleDict({b: _conv_bn_relu(channels, ci) for b in self.branches})
        self.attention = nn.ModuleDict(
            {
                b: nn.Sequential(_conv_bn_relu(ci, ci), nn.Conv2d(ci, area, 1, bias=False))
                for b in self.branches
            }
        )
        self.proj = _conv_bn_relu(ci * len(self.branches), channels)
        self.fuse = _conv_bn_relu(2 * channels, channels)

    def max_feature_size(self) -> tuple[int, int]:
        """The largest (H, W) the mask reaches at the module's input resolution."""
        s = self.shrink_factor
        return ((self.mask_size[0] - 1) // 2 + 1) * s, ((self.mask_size[1] - 1) // 2 + 1) * s

    def attention_map(self, feat: torch.Tensor, branch: str) -> torch.Tensor:
        """The (N, HW, HW) map A of ``branch`` for a reduced feature; out = feat @ A (sources on dim 1)."""
        n, _, h, w = feat.shape
        a = psa_mask(self.attention[branch](feat), branch, self.mask_size).view(n, h * w, h * w)
        return a.softmax(dim=1) if self.psa_softmax else a

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """The paper's two masks of position i = (y, x): ``collect``, the weights i gathers the
        other positions with (column i of A, sums to one), and ``distribute``, the weights i's
        feature enters the other positions with (row i of A; each receiver's weights sum to one).

        The attention runs on the shrunk grid (align-corners resizing): (y, x) asks its nearest
        cell there, and a cell's weight is shared by the input positions nearest to it.
        """
        (h, w), (sh, sw) = self.recorded["size"], self.recorded["grid_size"]

        def nearest(size: int, small: int) -> torch.Tensor:
            return (torch.arange(size) * ((small - 1) / max(size - 1, 1)) + 0.5).floor().long()

        rows, cols = nearest(h, sh), nearest(w, sw)
        i = int(rows[y]) * sw + int(cols[x])
        maps = {}
        for branch in self.branches:
            a = self.recorded[branch][index]
            m = (a[:, i] if branch == "collect" else a[i, :]).view(sh, sw)
            maps[branch] = spread(m, rows, cols) if (sh, sw) != (h, w) else m
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        max_h, max_w = self.max_feature_size()
        if h > max_h or w > max_w:
            s = self.shrink_factor
            raise ValueError(
                f"psa: mask_size={self.mask_size} with shrink_factor={self.shrink_factor} reaches features "
                f"of at most {max_h}x{max_w}, got {h}x{w}; raise mask_size to at least "
                f"({2 * ((h - 1) // s + 1) - 1}, {2 * ((w - 1) // s + 1) - 1})"
            )
        # The official shrink: (h - 1) // s + 1 with align_corners=True, which keeps the corner
        # pixels aligned for the 8k+1 crop sizes the recipes use.
        sh, sw = (h - 1) // self.shrink_factor + 1, (w - 1) // self.shrink_factor + 1
        if self.recording:
            self.record(size=(h, w), grid_size=(sh, sw))
        outs = []
        for branch in self.branches:
            feat = self.reduce[branch](x)
            if (sh, sw) != (h, w):
                feat = F.interpolate(feat, size=(sh, sw), mode="bilinear", align_corners=True)
            attention = self.attention_map(feat, branch)
            if self.recording:
                self.record(**{branch: attention})
            agg = torch.bmm(feat.flatten(2), attention)
            outs.append(agg.view(n, self.inner_channels, sh, sw) / self.normalization_factor)
        out = self.proj(torch.cat(outs, dim=1))
        if (sh, sw) != (h, w):
            # The official code resizes to ((sh-1)*s+1, ...), i.e. back to the 8k+1 input; resizing
            # to the input's own size is the same there and also handles other sizes.
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([x, out], dim=1))
