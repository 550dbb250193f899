"""Backbone + decode head + auxiliary head; the loss; inference."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import ResNet
from .inference import WINDOW_BATCH, infer
from .losses import SegmentationLoss


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
        _check_labels(target, self.num_classes, self.ignore_index)
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
                flip: bool = False, base_scale=None, window_batch: int = WINDOW_BATCH) -> torch.Tensor:
        """Class scores at the input's resolution (``segattn.models.inference.infer``): the logits of one
        ``whole`` or ``slide`` pass, or softmax probabilities averaged over ``scales`` and ``flip``."""
        return infer(self, images, mode, crop_size, stride, scales, flip, base_scale, window_batch)


def zero_initialised(module: nn.Module) -> tuple[str, ...]:
    """The weights of ``module`` that start at exactly zero: its learnable residual scales (DANet's PAM and
    CAM gamma, CCNet's gamma, Non-local's zero-initialised output BN, GCNet's last transform conv, ANN's
    output projection, ...). Each decides how much an attention branch adds to the identity, and the
    branch learns nothing while it stays near zero, so the trainer logs them (``train/gamma/<name>``)."""
    if any(p.is_meta for p in module.parameters()):  # built on the meta device to be measured: no values
        return ()
    return tuple(n for n, p in module.named_parameters()
                 if not n.endswith("bias") and p.numel() and not bool(p.detach().any()))


def start_residual_scales(module: nn.Module, names: tuple[str, ...], value: float) -> None:
    """``model.residual_init``: start the residual scales ``names`` (from :func:`zero_initialised`) at
    ``value`` instead of the papers' zero. A scalar or a per-channel scale (a norm's weight) is set to
    ``value``; a convolution's or linear layer's weight is drawn from N(0, (value / sqrt(fan_in))^2), so
    the branch starts adding about ``value`` times its input's scale in every output channel. ``value``
    0 leaves the module (and the random stream) untouched."""
    if not value:
        return
    params = dict(module.named_parameters())
    modules = dict(module.named_modules())
    # fork_rng: the draws below leave the global random stream where it was, so every module built after
    # the head (the auxiliary head) starts exactly as with the papers' start.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for name in names:
            p = params[name]
            owner, _, leaf = name.rpartition(".")
            if leaf == "weight" and isinstance(modules.get(owner), (nn.Conv2d, nn.Conv1d, nn.Linear)):
                p.normal_(0.0, value / math.sqrt(p[0].numel()))
            else:  # a scalar gamma, a norm's per-channel weight, a per-group or per-channel scale
                p.fill_(value)


def residual_scales(model: nn.Module) -> dict[str, float]:
    """``head.<name>`` -> value for each residual scale of the model's head (see :func:`zero_initialised`,
    recorded when the head was built): a scalar's value, a tensor's root mean square (``<name>_rms``)."""
    head = model.head
    params = dict(head.named_parameters())
    out = {}
    for name in getattr(head, "residual_scale_names", ()):
        p = params[name].detach().float()
        out[f"head.{name}" if p.numel() == 1 else f"head.{name}_rms"] = float(p if p.numel() == 1 else p.pow(2).mean().sqrt())
    return out


def _check_labels(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """The dataset check's message for label values outside 0..num_classes-1 that are not ``ignore_index``,
    instead of the index error cross-entropy or the SE loss's presence target would raise (or a device-side
    assert on a GPU). Meta tensors (the memory and FLOP counts) have no values to check."""
    if target.device.type == "meta":
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = target[bad].unique().tolist()
        raise ValueError(f"mask: invalid label value(s) {values[:10]}{'...' if len(values) > 10 else ''} for "
                         f"{num_classes} classes (valid: 0-{num_classes - 1}, {ignore_index}); dataset.check=true "
                         "lists every file with such values")
