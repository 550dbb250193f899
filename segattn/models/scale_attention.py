"""Attention to Scale (Chen et al., "Attention to Scale: Scale-aware Semantic Image Segmentation", CVPR 2016).

One network, shared by all scales, segments the image resized to each scale; an attention model
predicts, at every pixel, a softmax over the scales, and the merged score map is the per-pixel
weighted sum of the scales' score maps. Every scale's own output is also supervised (the paper's
"extra supervision", which it shows is essential for the merge to work).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import positive_int
from .inference import WINDOW_BATCH, infer

if TYPE_CHECKING:  # the wrapped model (factory.py wraps it; segmentor.py does not import this module)
    from .segmentor import Segmentor


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # keeps the one-scale model exactly equal to the plain one
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ScaleAttention(nn.Module):
    """A Segmentor run on several input scales with shared weights, merged by per-pixel scale attention.

    Same interface as :class:`Segmentor`: ``forward(images)`` returns a dict of logits with ``out``
    (the merged score map, at the resolution of the largest scale's score map) and, in training,
    every output of every scale under ``<name>_x<scale>`` (``out_x1``, ``aux_x0.5``, ...);
    ``loss_weights()``, ``loss(outputs, target)`` and ``predict(images)`` as there.

    Adaptation to our heads: the paper's attention model (3x3 conv with 512 filters, then a 1x1 conv
    to S channels) reads VGG's fc7 features, the features just below the classifier. Here it reads
    the backbone's last stage (c5) of every scale, each resized to the largest scale's c5 resolution
    and concatenated (so the weights see what every scale saw, as the public re-implementations do;
    with one scale this is the largest scale's c5). c5 exists for every head, whereas the heads'
    penultimate features differ from head to head (DANet has three). The 3x3 conv is followed by BN
    and ReLU like every conv of our heads. Its last conv starts at zero: the model starts as the
    average of the scales (the paper's average-pooling baseline) and learns to depart from it.

    Loss: the merged output is trained with the head's ``out`` weight; each scale's outputs with
    the plain segmentor's weights (``out`` 1, ``aux`` 0.4, a head's extra outputs as it defines),
    i.e. each scale is trained as the plain model would be, plus the merged prediction.
    """

    # The survey's taxonomy (Guo et al. 2022), as for the registered mechanisms: the weights come from convolutions, are
    # applied by element-wise product (one weight per pixel and scale, multiplying that scale's
    # score map) and live in the spatial domain (per pixel, over scales). Not registered in
    # ATTENTIONS: it wraps a whole segmentor, it is not an (N, C, H, W) -> (N, C, H, W) module.
    taxonomy = dict(weights="conv", applied="elementwise", domain="spatial")
    paper = "Attention to Scale: Scale-aware Semantic Image Segmentation (2016)"

    def __init__(self, segmentor: "Segmentor", scales=(1.0, 0.75, 0.5), channels: int = 512):
        super().__init__()
        scales = list(scales) if scales is not None else []
        if not scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0
                             for s in scales):
            raise ValueError(f"model.scale_attention.scales={scales!r}: expected a non-empty list of positive "
                             f"numbers, e.g. [1.0, 0.75, 0.5] (the paper's)")
        if len(set(float(s) for s in scales)) != len(scales):
            raise ValueError(f"model.scale_attention.scales={scales!r}: each scale once")
        channels = positive_int(channels, "model.scale_attention.channels", hint=" (paper: 512)")
        self.segmentor = segmentor
        self.scales = tuple(float(s) for s in scales)
        self.num_classes, self.ignore_index = segmentor.num_classes, segmentor.ignore_index
        n = len(self.scales)
        self.attention = nn.Sequential(
            nn.Conv2d(segmentor.backbone.channels[-1] * n, int(channels), 3, padding=1, bias=False),
            nn.BatchNorm2d(int(channels)),
            nn.ReLU(inplace=True),
            nn.Conv2d(int(channels), n, 1),
        )
        nn.init.zeros_(self.attention[-1].weight)
        nn.init.zeros_(self.attention[-1].bias)

    # Read-only views of the wrapped parts, for code that inspects a segmentor's parts.
    @property
    def backbone(self):
        return self.segmentor.backbone

    @property
    def head(self):
        return self.segmentor.head

    @property
    def criterion(self):
        return self.segmentor.criterion

    @property
    def aux_head(self):
        return self.segmentor.aux_head

    def suffix(self, scale: float) -> str:
        return f"_x{scale:g}"

    def _run(self, images: torch.Tensor, scale: float):
        """The wrapped segmentor's forward on the image resized by ``scale``; also returns c5."""
        if scale != 1.0:
            h, w = images.shape[-2:]
            images = F.interpolate(images, size=(max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))),
                                   mode="bilinear", align_corners=False)
        out, feats = self.segmentor.forward_features(images)  # the attention model reads c5
        return out, feats[-1]

    def _forward(self, images: torch.Tensor):
        runs = [self._run(images, s) for s in self.scales]
        largest = max(range(len(self.scales)), key=lambda i: self.scales[i])
        feat_size = runs[largest][1].shape[-2:]
        score_size = runs[largest][0]["out"].shape[-2:]
        logits = self.attention(torch.cat([_resize(c5, feat_size) for _, c5 in runs], dim=1))
        # Softmax first, then resize: a bilinear mix of distributions over scales still sums to one.
        weights = _resize(logits.softmax(dim=1), score_size)
        scores = torch.stack([_resize(out["out"], score_size) for out, _ in runs], dim=1)  # (N, S, K, h, w)
        merged = (weights.unsqueeze(2) * scores).sum(dim=1)
        result = {"out": merged}
        if self.training:
            for s, (out, _) in zip(self.scales, runs):
                result.update({f"{k}{self.suffix(s)}": v for k, v in out.items()})
        return result, weights

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._forward(images)[0]

    def scale_weights(self, images: torch.Tensor) -> torch.Tensor:
        """The per-pixel weights over ``scales``, (N, S, h, w) at the merged score map's resolution."""
        return self._forward(images)[1]

    def loss_weights(self) -> dict[str, float]:
        plain = self.segmentor.loss_weights()
        weights = {"out": plain.get("out", 1.0)}
        for s in self.scales:
            weights.update({f"{k}{self.suffix(s)}": w for k, w in plain.items()})
        return weights

    def loss(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The merged output's loss plus, for every scale, the plain segmentor's loss on that scale's outputs."""
        total, parts = self.segmentor.loss({"out": outputs["out"]}, target)
        parts = dict(parts)
        for s in self.scales:
            suffix = self.suffix(s)
            group = {k[: -len(suffix)]: v for k, v in outputs.items() if k.endswith(suffix)}
            if group:
                t, p = self.segmentor.loss(group, target)  # the plain model's weights and loss kinds
                total = total + t
                parts.update({f"{k}{suffix}": v for k, v in p.items()})
        return total, parts

    @torch.no_grad()
    def predict(self, images: torch.Tensor, mode: str = "whole", crop_size=None, stride=None, scales=None,
                flip: bool = False, base_scale=None, window_batch: int = WINDOW_BATCH) -> torch.Tensor:
        """As :meth:`Segmentor.predict` (every inference mode), with the merged output as the logits."""
        return infer(self, images, mode, crop_size, stride, scales, flip, base_scale, window_batch)


def wrap(segmentor: "Segmentor", cfg: dict | None) -> nn.Module:
    """``segmentor`` wrapped as configured by ``model.scale_attention`` (null or ``scales: null``: unchanged)."""
    cfg = dict(cfg or {})
    scales = cfg.pop("scales", None)
    if scales is None:
        return segmentor
    unknown = set(cfg) - {"channels"}
    if unknown:
        raise ValueError(f"model.scale_attention has unknown keys {sorted(unknown)}; expected scales, channels")
    return ScaleAttention(segmentor, scales, **cfg)
