"""SANet's head (Zhong et al., "Squeeze-and-Attention Networks for Semantic Segmentation", CVPR 2020)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention.sa import SqueezeAttention
from ..layers import classifier, conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head

STAGES = ("c2", "c3", "c4", "c5")


@register_head("sa")
class SAHead(BaseDecodeHead):
    """SANet's decode head (Sec. 3.4, Fig. 3), on a dilated ResNet.

    - Each selected backbone stage is reduced to ``channels`` (1x1 conv+BN+ReLU) and passed
      through an SA module ("SA head"); a 1x1 classifier turns it into class-wise mask logits,
      returned as ``mask_<stage>`` and supervised by the label (the paper's multi-stage masks).
    - An FCN branch on c5 (conv3x3+BN+ReLU, classifier) gives the pixel-wise prediction ``dense``.
    - The masks, resized to c5's resolution, are concatenated and merged by a 1x1 conv, and
      "guide" the pixel-wise prediction: ``out = dense + merged``. Adding logits multiplies the two
      predictions' class probabilities (softmax(a + b) is proportional to softmax(a) * softmax(b)),
      which is the paper's mask-times-prediction fusion without the sign ambiguity of multiplying
      raw logits.
    - With ``class_presence_loss`` an image-level classifier (GAP of the c5 branch -> linear)
      returns ``presence`` (N, num_classes) logits for the paper's categorical loss: a multi-label
      BCE against the classes present in the label (see ``presence_keys``).

    Loss weights follow L = L_mul + alpha * L_cat + beta * L_den: "out" 1, "presence" alpha
    (``presence_weight``, 0.2), and beta (``dense_weight``, 0.8) shared equally by the dense
    prediction and the per-stage masks, so adding a stage does not inflate the auxiliary losses.
    """

    in_index = (0, 1, 2, 3)  # c2..c5: an SA module on each stage in ``stages``

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        channels: int = 512,
        dropout: float = 0.1,
        stages: list[str] | tuple[str, ...] = STAGES,
        pool_size: int = 2,
        dense_weight: float = 0.8,
        class_presence_loss: bool = False,
        presence_weight: float = 0.2,
    ):
        super().__init__()
        if len(in_channels) != len(STAGES):
            raise ValueError(f"sa head: in_channels must give the channels of {list(STAGES)}, got {list(in_channels)}")
        stages = [str(s) for s in stages]
        bad = [s for s in stages if s not in STAGES]
        if not stages or bad or len(set(stages)) != len(stages):
            raise ValueError(f"sa head: stages must be distinct names from {list(STAGES)}, got {stages}")
        self.stages = [s for s in STAGES if s in stages]
        self.num_classes = int(num_classes)

        self.sa = nn.ModuleDict(
            {
                s: nn.Sequential(conv_bn_relu(in_channels[STAGES.index(s)], channels, 1), SqueezeAttention(channels, pool_size))
                for s in self.stages
            }
        )
        self.mask_cls = nn.ModuleDict(
            {s: nn.Sequential(nn.Dropout2d(dropout), classifier(channels, num_classes)) for s in self.stages}
        )
        self.merge = nn.Conv2d(len(self.stages) * num_classes, num_classes, 1)
        self.dense = conv_bn_relu(in_channels[-1], channels, 3)
        self.dense_cls = nn.Sequential(nn.Dropout2d(dropout), classifier(channels, num_classes))
        self.presence = nn.Linear(channels, num_classes) if class_presence_loss else None

        share = float(dense_weight) / (len(self.stages) + 1)
        self.loss_weights = {"out": 1.0, "dense": share, **{f"mask_{s}": share for s in self.stages}}
        # Keys holding (N, num_classes) image-level logits: the segmentor scores them with a
        # multi-label BCE against the classes present in the label, not with a pixel-wise CE.
        self.presence_keys = set()
        if class_presence_loss:
            self.loss_weights["presence"] = float(presence_weight)
            self.presence_keys = {"presence"}

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        c5 = feats[-1]
        size = c5.shape[-2:]
        dense_feat = self.dense(c5)
        outputs = {"dense": self.dense_cls(dense_feat)}
        masks = []
        for s in self.stages:
            m = self.mask_cls[s](self.sa[s](feats[STAGES.index(s)]))
            outputs[f"mask_{s}"] = m
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            masks.append(m)
        outputs["out"] = outputs["dense"] + self.merge(torch.cat(masks, dim=1))
        if self.presence is not None:
            outputs["presence"] = self.presence(dense_feat.mean(dim=(2, 3)))
        return outputs
