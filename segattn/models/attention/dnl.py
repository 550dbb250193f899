"""Disentangled non-local block (Yin et al., "Disentangled Non-Local Neural Networks", ECCV 2020)."""

from __future__ import annotations

import torch

from .nl import NonLocal2d
from .registry import SOFTMAX_SHIFT, register


@register("dnl")
class DisentangledNonLocal2d(NonLocal2d):
    """The non-local block with its attention split in two (paper Eq. 7), as mmseg's
    ``DisentangledNonLocal2d``:

    - a *whitened pairwise* term: queries and keys have their mean over the positions subtracted
      before the dot product, so the pairwise weights model how two pixels relate and not how
      salient a pixel is on its own; the logits are divided by sqrt(C') (``use_scale``) and by a
      ``temperature`` (0.05: sharper than the plain non-local's softmax);
    - a *unary* term: a 1x1 conv on the input gives one logit per pixel, a softmax over the
      positions pools g(x) into one vector (GCNet's attention pooling), added to every position.

    Both terms go through the same W_z (``conv_out``: 1x1 conv + BN with zero scale, so the block
    starts as the identity): out = x + W_z(pairwise) + W_z(unary), in training too (the BN then sees
    the unary vectors of the batch as a batch of 1x1 maps, as in mmseg). ``mode`` is mmseg's
    ``embedded_gaussian`` (softmax, the recipe) or ``dot_product`` (division by HW, no temperature).
    ``impl`` as ``nl``: ``fused`` never holds the HW x HW map, ``explicit`` builds it.
    """

    # Survey (Guo et al. 2022): the pairwise weights are a matrix product of whitened embeddings and the unary
    # weights come from a 1x1 conv (matmul+conv); both aggregate g by a matrix product and the unary result is
    # added to every position (matmul+add); both softmaxes run over the spatial positions.
    taxonomy = dict(weights="matmul+conv", applied="matmul+add", domain="spatial")
    paper = "Disentangled Non-Local Neural Networks (2020)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `DNLHead` (`DisentangledNonLocal2d` on mmcv `NonLocal2d`)"

    # The head's facts (segattn.models.heads.registry.head_facts; this mechanism uses the generic head).
    # configs/dnlnet/metafile.yaml: dnl_r{50,101}-d8_4xb2-80k_cityscapes-512x1024
    published = {"r50_d8_cityscapes_80k": 79.33, "r101_d8_cityscapes_80k": 80.41}
    mmseg_params = 24_132_372  # mmseg's DNLHead at the recipe's widths, 19 classes

    def __init__(self, channels: int, reduction: int = 2, use_scale: bool = True, temperature: float = 0.05,
                 mode: str = "embedded_gaussian", use_bn: bool = True, impl: str = "fused"):
        if mode not in ("embedded_gaussian", "dot_product"):
            raise ValueError(f"dnl: mode must be 'embedded_gaussian' or 'dot_product' (mmseg DNLHead's), got {mode!r}")
        if not float(temperature) > 0:
            raise ValueError(f"dnl: temperature must be > 0, got {temperature!r}")
        super().__init__(channels, reduction=reduction, use_scale=use_scale, mode=mode, sub_sample=False,
                         use_bn=use_bn, impl=impl)
        self.temperature = float(temperature)
        # PyTorch's default initialisation, as mmseg (nothing re-initialises it).
        self.conv_mask = torch.nn.Conv2d(self.channels, 1, 1)
        # Whitening subtracts each key's and query's mean over the positions, bias included; the unary mask is a
        # softmax over positions (segattn/check.py).
        whitened = "the whitening subtracts the mean over positions, which removes a bias"
        self.grad_exempt = {**self.grad_exempt, "theta.bias": whitened, "phi.bias": whitened,
                            "conv_mask.bias": SOFTMAX_SHIFT}

    def embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Whitened queries and keys (N, HW, C') and the logit scale 1 / (sqrt(C') * temperature)."""
        query, key, scale = super().embeddings(x)
        query = query - query.mean(dim=1, keepdim=True)
        key = key - key.mean(dim=1, keepdim=True)
        if self.mode == "embedded_gaussian":
            scale = scale / self.temperature
        return query, key, scale

    def unary(self, x: torch.Tensor) -> torch.Tensor:
        """The unary weights, (N, HW), summing to one over the positions."""
        return self.conv_mask(x).flatten(1).softmax(dim=1)

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """``pairwise``: the whitened softmax row of position (y, x); ``unary``: the pooling weights,
        the same for every position (what the paper's Fig. 1 contrasts)."""
        h, w = self.recorded["size"]
        maps = super().attention_maps(y, x, index)
        return {"pairwise": maps["attention"], "unary": self.recorded["unary"][index].view(h, w)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        value = self.g(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        query, key, scale = self.embeddings(x)
        unary = self.unary(x)
        if self.recording:
            self.record(query=query, key=key, scale=scale, size=(h, w), key_size=(h, w), unary=unary)
        pairwise = self.aggregate(query, key, value, scale).transpose(1, 2).reshape(n, self.inter_channels, h, w)
        pooled = torch.bmm(unary.unsqueeze(1), value).view(n, self.inter_channels, 1, 1)
        return x + self.conv_out(pairwise) + self.conv_out(pooled)
