"""Pixel losses: cross-entropy, OHEM cross-entropy, class weights (the ``loss`` config node).

``SegmentationLoss(name, ohem_thresh, ohem_min_kept, class_weight)`` is what ``Segmentor.loss`` calls
for every segmentation output:

- ``ce``: cross-entropy over the labelled pixels (255 = ignore), optionally class-weighted
  (``F.cross_entropy(weight=...)``: a weighted mean, so the weights' scale does not matter).
- ``ohem``: online hard example mining as in the official OCNet and CCNet code
  (openseg-group/OCNet.pytorch ``utils/loss.py`` and speedinghzl/CCNet ``utils/loss.py``,
  ``OhemCrossEntropy2d``): the softmax probability of each labelled pixel's true class is computed
  without gradient; the threshold is ``ohem_thresh``, raised to the ``ohem_min_kept``-th smallest
  probability of the batch when that one is larger (so at least ``min_kept`` pixels per batch are
  kept, the batch as a whole as there, not per image as mmseg's ``OHEMPixelSampler``); pixels whose
  probability is <= the threshold are kept, the others become ignore; when ``min_kept`` is at least
  the number of labelled pixels, all are kept. Cross-entropy (class-weighted when asked) is then the
  mean over the kept pixels. CCNet's Cityscapes setting is thresh 0.7, min_kept 100000 at 769x769
  crops, 8 images per batch. Followed: OCNet's full-resolution selection; not followed: CCNet's
  threshold search on a 1/8 down-sampled copy of the probabilities (a speed trick of its NumPy code).
- ``class_weight``: null, a list (one per class), or ``auto``: the inverse log-frequency of ENet
  (Paszke et al. 2016), ``w_k = 1 / ln(1.02 + p_k)`` with ``p_k`` the share of class k among the
  labelled pixels of the training masks (``class_weights_from_counts``). ``auto`` is resolved by the
  trainer (``set_class_counts``), which counts the training masks once at set-up.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("ce", "ohem")
ENET_C = 1.02  # ENet's constant: weights stay within [1 / ln(2.02), 1 / ln(1.02)] = [1.42, 50.5]


def class_weights_from_counts(counts) -> list[float]:
    """ENet's inverse log-frequency weights ``1 / ln(1.02 + p_k)`` from per-class pixel counts."""
    counts = [float(c) for c in counts]
    total = sum(counts)
    if total <= 0:
        raise ValueError("loss.class_weight=auto: the training masks have no labelled pixels to count")
    return [1.0 / math.log(ENET_C + c / total) for c in counts]


def ohem_keep(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int,
              ignore_index: int = 255) -> torch.Tensor:
    """The target with the pixels OHEM drops set to ``ignore_index`` (see the module docstring)."""
    with torch.no_grad():
        valid = target != ignore_index
        num_valid = int(valid.sum())
        if num_valid == 0 or min_kept >= num_valid:
            return target
        prob = F.softmax(logits.float(), dim=1)
        true_prob = prob.gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)[valid]
        threshold = float(thresh)
        if min_kept > 0:
            kth = torch.kthvalue(true_prob, min(num_valid, int(min_kept))).values.item()
            threshold = max(threshold, kth)
        keep = torch.zeros_like(valid)
        keep[valid] = true_prob <= threshold
        return torch.where(keep, target, torch.full_like(target, ignore_index))


class SegmentationLoss:
    """Per-pixel loss of one output: ``loss(logits, target)`` with logits at the target's size.

    A plain object, not an ``nn.Module``: it holds no parameters or buffers, so checkpoints and
    state-dict keys are the same whatever the loss.
    """

    def __init__(self, name: str = "ce", ohem_thresh: float = 0.7, ohem_min_kept: int = 100000,
                 class_weight=None, ignore_index: int = 255, num_classes: int | None = None):
        if name not in LOSSES:
            raise ValueError(f"loss.name={name!r}; expected one of {', '.join(LOSSES)}")
        if not 0.0 <= float(ohem_thresh) <= 1.0:
            raise ValueError(f"loss.ohem_thresh={ohem_thresh}; expected a probability in [0, 1]")
        if int(ohem_min_kept) < 0:
            raise ValueError(f"loss.ohem_min_kept={ohem_min_kept}; expected a pixel count >= 0")
        self.name, self.ohem_thresh, self.ohem_min_kept = name, float(ohem_thresh), int(ohem_min_kept)
        self.ignore_index, self.num_classes = ignore_index, num_classes
        self.auto = class_weight == "auto"
        self.class_weight = None
        if class_weight is not None and not self.auto:
            if isinstance(class_weight, str) or not hasattr(class_weight, "__len__"):
                raise ValueError(f"loss.class_weight={class_weight!r}; expected null, auto or a list of one "
                                 f"weight per class")
            self.set_class_weight(class_weight)

    def set_class_weight(self, weights) -> None:
        weights = [float(w) for w in weights]
        if self.num_classes is not None and len(weights) != self.num_classes:
            raise ValueError(f"loss.class_weight has {len(weights)} weights; the dataset has {self.num_classes} "
                             f"classes (one weight per class, in the dataset's class order)")
        if any(not w >= 0 for w in weights):
            raise ValueError(f"loss.class_weight={weights}: weights must be >= 0")
        self.class_weight = torch.tensor(weights, dtype=torch.float32)

    def set_class_counts(self, counts) -> list[float]:
        """Resolve ``class_weight=auto`` from the training masks' per-class pixel counts; returns the weights."""
        weights = class_weights_from_counts(counts)
        self.set_class_weight(weights)
        return weights

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, ohem: bool = True) -> torch.Tensor:
        """``ohem=False``: plain (weighted) cross-entropy even when the loss is ``ohem`` (the auxiliary head)."""
        if self.auto and self.class_weight is None:
            raise ValueError("loss.class_weight=auto has not been resolved: the trainer counts the training "
                             "masks at set-up (SegmentationLoss.set_class_counts); outside it, give a list")
        weight = None if self.class_weight is None else self.class_weight.to(logits.device, logits.dtype)
        if self.name == "ohem" and ohem:
            kept = ohem_keep(logits, target, self.ohem_thresh, self.ohem_min_kept, self.ignore_index)
            if not bool((kept != self.ignore_index).any()) and bool((target != self.ignore_index).any()):
                return logits.sum() * 0.0  # every labelled pixel is easy (min_kept 0): nothing to learn here
            target = kept
        return F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index)
