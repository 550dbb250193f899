"""Non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import attention_row, check_impl, fused_attention, positive_int
from .record import Recorder, spread, window_index
from .registry import SOFTMAX_SHIFT, VALUE_CONSTANT, register

_MODES = ("embedded_gaussian", "gaussian", "dot_product")


@register("nl")
class NonLocal2d(Recorder, nn.Module):
    """The non-local block z = x + W_z(y), y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j) (paper Eq. 1, 6).

    ``mode`` picks the pairwise function f of Sec. 3.2: ``embedded_gaussian`` (the default and
    the one the segmentation recipes use) is softmax over j of theta(x_i)^T phi(x_j);
    ``gaussian`` drops the theta/phi embeddings; ``dot_product`` uses f = theta^T phi normalised
    by N, the number of positions. (The ``concatenation`` variant is left out: it materialises an
    HW x HW x 2C' tensor, and the paper finds the variants perform alike.)

    ``reduction`` sets the bottleneck C' = C // reduction (the paper halves the channels, Sec.
    3.3). ``impl="fused"`` (the default) computes the same function without the HW x HW' map:
    the softmax modes through ``fused_attention`` (flash / memory-efficient kernels), and
    ``dot_product``, which is not a softmax, as theta^T (phi g^T) / N, a C' x C' product (matrix
    products associate); ``impl="explicit"`` builds the map as the paper writes it (the reference
    the tests compare with). ``use_scale`` divides the embedded-Gaussian logits by sqrt(C'), as the authors'
    released Caffe2 code and mmcv's ``NonLocal2d`` do (not in the paper's equations); like
    mmcv, it does not touch the plain ``gaussian`` mode.
    ``sub_sample`` max-pools phi and g by 2 (Sec. 3.3, "a subsampling trick") in floor mode, as
    mmcv's ``NonLocal2d`` (an odd row or column is dropped from the keys; a side of 1 is refused).
    ``use_bn`` follows the paper's implementation details (Sec. 4): W_z is followed by BN whose
    scale is initialised to zero, so the block starts as the identity and can be inserted into a
    pre-trained network; without BN the W_z convolution itself is zero-initialised. theta, phi
    and g start from N(0, 0.01) as in the released code.
    """

    # Survey (Guo et al. 2022): 矩阵乘法 叉乘 (weights from a matrix product theta^T phi, applied as an HW x HW matrix
    # product with g) over the spatial positions.
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "Non-local Neural Networks (2018)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `NLHead` + mmcv `NonLocal2d`"

    # The head's facts (segattn.models.heads.registry.head_facts; this mechanism uses the generic head).
    # mmsegmentation 1.x single-scale val mIoU, R50-D8 / R101-D8, Cityscapes 512x1024, 80k iterations
    published = {"r50_d8_cityscapes_80k": 78.01, "r101_d8_cityscapes_80k": 78.93}
    mmseg_params = 24_131_859  # mmseg's NLHead at the recipe's widths, 19 classes

    def __init__(
        self,
        channels: int,
        reduction: int = 2,
        use_scale: bool = True,
        mode: str = "embedded_gaussian",
        sub_sample: bool = False,
        use_bn: bool = True,
        impl: str = "fused",
    ):
        super().__init__()
        reduction = positive_int(reduction, "nl: reduction")
        if mode not in _MODES:
            raise ValueError(f"nl: mode must be one of {_MODES}, got {mode!r}")
        self.channels = int(channels)
        self.reduction = int(reduction)
        # max(1, ...) as mmcv: a very narrow input still gets a one-channel embedding.
        self.inter_channels = max(1, self.channels // self.reduction)
        self.use_scale = bool(use_scale)
        self.mode = mode
        self.sub_sample = bool(sub_sample)
        self.use_bn = bool(use_bn)
        self.impl = check_impl("nl", impl)

        c, ci = self.channels, self.inter_channels
        self.g = nn.Conv2d(c, ci, 1)
        if mode != "gaussian":
            self.theta = nn.Conv2d(c, ci, 1)
            self.phi = nn.Conv2d(c, ci, 1)
        if self.use_bn:
            self.conv_out = nn.Sequential(nn.Conv2d(ci, c, 1, bias=False), nn.BatchNorm2d(c))
        else:
            self.conv_out = nn.Conv2d(ci, c, 1)
        self.pool = nn.MaxPool2d(2) if self.sub_sample else nn.Identity()
        # Zero gradients by construction (segattn/check.py): with a softmax over the keys, phi's bias shifts all of
        # a query's logits alike and g's bias adds a per-channel constant (dot_product divides by N instead).
        self.grad_exempt = {}
        if mode == "embedded_gaussian":
            self.grad_exempt["phi.bias"] = SOFTMAX_SHIFT
        if mode in ("embedded_gaussian", "gaussian"):
            self.grad_exempt["g.bias"] = VALUE_CONSTANT
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name in ("g", "theta", "phi"):
            conv = getattr(self, name, None)
            if conv is not None:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
        if self.use_bn:
            nn.init.kaiming_normal_(self.conv_out[0].weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.conv_out[1].weight)
            nn.init.zeros_(self.conv_out[1].bias)
        else:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Queries (N, HW, C'), keys (N, HW', C') and the logit scale of f (keys after sub-sampling)."""
        if self.mode == "gaussian":
            query, key = x, self.pool(x)
        else:
            query, key = self.theta(x), self.pool(self.phi(x))
        scale = query.shape[1] ** -0.5 if self.use_scale and self.mode == "embedded_gaussian" else 1.0
        return query.flatten(2).transpose(1, 2), key.flatten(2).transpose(1, 2), scale

    def pairwise(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised f(x_i, x_j)/C(x) as an (N, HW, HW') matrix (HW' = keys after sub-sampling):
        the explicit form, for ``impl="explicit"`` and the tests."""
        return self.normalised(*self.embeddings(x))

    def normalised(self, query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
        logits = torch.bmm(query, key.transpose(1, 2))
        # In place, as mmcv: out of place would hold a second HW x HW' tensor (354 MB at 97x97).
        # bmm's backward needs its inputs, not its output, so autograd allows it.
        if self.mode == "dot_product":
            # Sec. 3.2: C(x) = N, the number of positions, which keeps the gradient simple.
            return logits.div_(key.shape[1])
        if scale != 1.0:
            logits.mul_(scale)
        return logits.softmax(dim=-1)

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """f(x_i, x_j)/C(x) of position i = (y, x) over the input positions j (see ``record.py``):
        the one row, computed from the recorded queries and keys.

        With ``sub_sample`` a key is the max of a 2x2 window; its weight is shared by the window.
        """
        h, w = self.recorded["size"]
        kh, kw = self.recorded["key_size"]
        normalise = "mean" if self.mode == "dot_product" else "softmax"
        row = attention_row(self.recorded["query"][index], self.recorded["key"][index], y * w + x,
                            self.recorded["scale"], normalise).view(kh, kw)
        if (kh, kw) != (h, w):
            row = spread(row, window_index(h, kh, 2), window_index(w, kw, 2))
        return {"attention": row}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.sub_sample and min(h, w) < 2:
            raise ValueError(f"nl: sub_sample max-pools the keys by 2 (floor, as mmcv), so the map must be at "
                             f"least 2x2, got {h}x{w}; set head.sub_sample=false for smaller maps")
        g = self.pool(self.g(x))
        value = g.flatten(2).transpose(1, 2)  # (N, HW', C')
        query, key, scale = self.embeddings(x)
        if self.recording:
            self.record(query=query, key=key, scale=scale, size=(h, w), key_size=tuple(g.shape[-2:]))
        y = self.aggregate(query, key, value, scale).transpose(1, 2).reshape(n, self.inter_channels, h, w)
        return x + self.conv_out(y)

    def aggregate(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        """y_i = sum_j f(x_i, x_j)/C(x) g(x_j), (N, HW, C'), as ``impl`` says (also DNL's pairwise term)."""
        if self.impl == "explicit":
            return torch.bmm(self.normalised(query, key, scale), value)
        if self.mode == "dot_product":
            # (theta^T phi / N) g = theta^T (phi g^T) / N: a C' x C' intermediate instead of HW x HW'.
            return torch.bmm(query, torch.bmm(key.transpose(1, 2), value)) / key.shape[1]
        return fused_attention(query, key, value, scale)
