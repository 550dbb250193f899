"""Backbone + decode head + auxiliary head; the loss; inference."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import ResNet
from .block_attention import block_attention, block_widths
from .heads import FCNHead, build_head
from .inference import infer
from .layers import apply_init
from .losses import SegmentationLoss
from .scale_attention import wrap


class Segmentor(nn.Module):
    """``forward(images)`` returns a dict of logits at feature resolution: ``out`` (the prediction),
    ``aux`` (the auxiliary FCN head on stage 3, in training) and any extra outputs of the head.
    ``loss(outputs, target)`` upsamples each to the label size and sums the weighted per-pixel losses
    (``criterion``: cross-entropy or OHEM, optionally class-weighted; ``segattn.models.losses``).
    """

    def __init__(self, backbone: ResNet, head: nn.Module, num_classes: int, aux_head: nn.Module | None = None,
                 aux_weight: float = 0.4, ignore_index: int = 255, criterion: SegmentationLoss | None = None):
        super().__init__()
        self.backbone, self.head, self.aux_head = backbone, head, aux_head
        self.num_classes, self.aux_weight, self.ignore_index = num_classes, aux_weight, ignore_index
        self.criterion = criterion or SegmentationLoss(ignore_index=ignore_index, num_classes=num_classes)

    def forward_features(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """``forward`` plus the backbone's stage outputs ``[c2, c3, c4, c5]`` it computed them from
        (Attention to Scale reads c5 of every scale)."""
        feats = self.backbone(images)
        out = self.head(feats)
        out = dict(out) if isinstance(out, dict) else {"out": out}
        if self.aux_head is not None and self.training:
            out["aux"] = self.aux_head(feats)
        return out, feats

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(images)[0]

    def loss_weights(self) -> dict[str, float]:
        weights = dict(getattr(self.head, "loss_weights", {"out": 1.0}))
        if self.aux_head is not None:
            weights["aux"] = self.aux_weight
        return weights

    def loss(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of per-output losses; returns (total, {name: value})."""
        weights = self.loss_weights()
        presence = getattr(self.head, "presence_keys", ())
        parts = {}
        total = 0.0
        for name, logits in outputs.items():
            w = weights.get(name, 0.0)
            if w == 0.0:
                continue
            if name in presence:
                # Image-level multi-label loss: which classes appear in the (non-ignored) label.
                present = torch.zeros_like(logits)
                for i, t in enumerate(target):
                    cls = t[t != self.ignore_index].unique()
                    present[i, cls] = 1.0
                part = F.binary_cross_entropy_with_logits(logits, present)
            else:
                logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
                # OHEM on the decode head's outputs, plain cross-entropy on the auxiliary head, as CCNet's
                # CriterionOhemDSN (and mmseg's recipes, which set the sampler on the decode head only).
                part = self.criterion(logits, target, ohem=name != "aux")
            parts[name] = part.detach()
            total = total + w * part
        return total, parts

    @torch.no_grad()
    def predict(self, images: torch.Tensor, mode: str = "whole", crop_size=None, stride=None, scales=None,
                flip: bool = False, base_scale=None) -> torch.Tensor:
        """Class scores at the input's resolution (``segattn.models.inference.infer``): the logits of one
        ``whole`` or ``slide`` pass, or softmax probabilities averaged over ``scales`` and ``flip``."""
        return infer(self, images, mode, crop_size, stride, scales, flip, base_scale)


def build_model(backbone: dict, head: dict, num_classes: int, aux_head: dict | None = None,
                scale_attention: dict | None = None, loss: dict | None = None, init: str = "mmseg") -> nn.Module:
    """Build a Segmentor from plain dicts (the ``backbone``, ``head``, ``model.aux_head``,
    ``model.scale_attention`` and ``loss`` config nodes). With ``model.scale_attention.scales`` set, the
    Segmentor is wrapped in :class:`~segattn.models.scale_attention.ScaleAttention` (same interface).
    ``loss.class_weight=auto`` is left for the trainer to resolve (``model.criterion.set_class_counts``).
    ``init`` (``model.init``): the heads' start, ``mmseg`` (the published recipes') or ``pytorch``
    (``segattn.models.layers.apply_init``); the backbone is not touched (it is torchvision's start)."""
    bb_cfg = dict(backbone)
    bb_cfg.pop("name", None)
    attention_name = bb_cfg.pop("block_attention", None)
    attention_kwargs = bb_cfg.pop("block_attention_kwargs", None)
    if callable(attention_name):  # library use: a ``channels -> nn.Module`` factory of one's own
        bb_cfg["block_attention"] = attention_name
    elif attention_name:
        widths = block_widths(bb_cfg.get("depth", 50), bb_cfg.get("width", 64))
        bb_cfg["block_attention"] = block_attention(attention_name, attention_kwargs, widths)
    elif attention_kwargs:
        raise ValueError(f"backbone.block_attention_kwargs={attention_kwargs} is set but backbone.block_attention is null")
    bb = ResNet(**bb_cfg)
    head_module = apply_init(build_head(head, bb.channels, num_classes), init)
    aux = dict(aux_head or {})
    aux_weight = float(aux.pop("weight", 0.4))
    aux_module = None
    if aux_weight > 0:
        # mmseg's auxiliary head: one 3x3 conv on stage 3 (c4), no concat, dropout 0.1.
        aux_module = FCNHead(bb.channels, num_classes, channels=aux.pop("channels", 256), num_convs=1,
                             concat_input=False, dropout=aux.pop("dropout", 0.1), in_index=2)
        apply_init(aux_module, init)
    criterion = SegmentationLoss(**dict(loss or {}), num_classes=num_classes)
    return wrap(Segmentor(bb, head_module, num_classes, aux_module, aux_weight, criterion=criterion), scale_attention)


def build_model_from_config(cfg: dict, num_classes: int, pretrained: bool = True) -> nn.Module:
    """``build_model`` on a whole training config (``backbone``, ``head``, ``model.aux_head``,
    ``model.scale_attention``, ``loss``): what the trainer, eval.py, the benchmarks and the scripts build.

    ``pretrained=False`` skips ``backbone.pretrained``: the weights come from a checkpoint (resume,
    eval.py), and the ImageNet file need not exist on the machine that resumes or evaluates.
    """
    backbone = dict(cfg["backbone"]) if pretrained else dict(cfg["backbone"], pretrained=None)
    model = cfg.get("model") or {}
    return build_model(backbone, cfg["head"], num_classes, model.get("aux_head"), model.get("scale_attention"),
                       cfg.get("loss"), model.get("init", "mmseg"))
