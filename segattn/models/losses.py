"""Pixel losses: cross-entropy, OHEM, Dice, Jaccard, focal, Lovasz, Tversky, their weighted sums, class
weights (the ``loss`` config node).

``SegmentationLoss(name, ...)`` is what ``Segmentor.loss`` calls for every segmentation output (the
decode head's and the auxiliary head's). ``name`` is one loss or a list whose terms are summed with
``weights`` (``loss.name=[ce,dice] loss.weights=[1.0,0.5]``; null weights: 1.0 each):

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
  The auxiliary head keeps plain cross-entropy, as CCNet's ``CriterionOhemDSN``.
- ``dice``, ``jaccard``, ``tversky``: segmentation_models_pytorch's multiclass ``DiceLoss``,
  ``JaccardLoss`` and ``TverskyLoss`` (from_logits, smooth ``loss.smooth``, eps 1e-7): softmax
  probabilities and one-hot targets, ignored pixels zeroed in both, summed over the whole batch per class
  (soft TP, FP, FN); the loss is 1 - score per class, 0 for a class absent from the batch's labels, and
  the mean over all classes (Tversky: that mean to the power ``tversky_gamma``; score
  ``TP / (TP + alpha FP + beta FN)``, Tversky et al.'s index as Salehi et al., "Tversky loss function
  for image segmentation using 3D fully convolutional deep networks" (2017), use it).
- ``focal``: segmentation_models_pytorch's multiclass ``FocalLoss`` (Lin et al., "Focal Loss for Dense
  Object Detection" (2017)): a sigmoid focal term ``(1 - p_t)^gamma BCE`` per class and labelled pixel
  (one-vs-rest, as both smp and mmseg compute it), summed over the classes and averaged over the
  labelled pixels; ``focal_alpha`` (null: none) weighs positives by alpha, negatives by 1 - alpha.
- ``lovasz``: the Lovasz-softmax loss of Berman et al., "The Lovasz-Softmax loss: A tractable surrogate
  for the optimization of the intersection-over-union measure in neural networks" (2018), as
  segmentation_models_pytorch's ``LovaszLoss`` (per batch, the classes present in the labels).
- ``class_weight``: null, a list (one per class), or ``auto``: the inverse log-frequency of ENet
  (Paszke et al. 2016), ``w_k = 1 / ln(1.02 + p_k)`` with ``p_k`` the share of class k among the
  labelled pixels of the training masks (``class_weights_from_counts``). ``auto`` is resolved by the
  trainer (``set_class_counts``), which counts the training masks once at set-up. It weighs the
  cross-entropy terms (``ce``, ``ohem``); smp's region and focal losses have no class weights, so a
  loss made only of them refuses one.

tests/test_losses.py checks each against smp's code, re-implemented there, at 1e-6 in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("ce", "ohem", "dice", "jaccard", "focal", "lovasz", "tversky")
WEIGHTED = ("ce", "ohem")  # the losses that take loss.class_weight
EPS = 1e-7  # smp's eps: the region losses' denominators are at least this
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


def soft_counts(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255):
    """Per class, summed over the batch: soft TP, FP, FN of the softmax probabilities against one-hot
    targets (ignored pixels count in none), and which classes the labels hold."""
    valid = (target != ignore_index).unsqueeze(1)
    prob = logits.softmax(1) * valid
    onehot = F.one_hot(torch.where(valid[:, 0], target, 0), logits.shape[1]).movedim(-1, 1).to(prob.dtype) * valid
    dims = (0, *range(2, logits.dim()))
    tp = (prob * onehot).sum(dims)
    return tp, (prob * (1 - onehot)).sum(dims), ((1 - prob) * onehot).sum(dims), onehot.sum(dims) > 0


def region_loss(name: str, logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                smooth: float = 0.0, alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0) -> torch.Tensor:
    """``dice``, ``jaccard`` or ``tversky`` (see the module docstring): 1 - score per class present in the
    labels (0 for the others), averaged over all classes."""
    tp, fp, fn, present = soft_counts(logits, target, ignore_index)
    if name == "dice":
        score = (2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(EPS)
    elif name == "jaccard":
        score = (tp + smooth) / (tp + fp + fn + smooth).clamp_min(EPS)
    else:
        score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(EPS)
    loss = ((1 - score) * present).mean()
    return loss ** gamma if name == "tversky" else loss


def focal_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, gamma: float = 2.0,
               alpha: float | None = None) -> torch.Tensor:
    """Sigmoid focal loss per class and labelled pixel, summed over classes, mean over pixels."""
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    x = logits.movedim(1, -1)[valid]  # (P, C)
    t = F.one_hot(target[valid], logits.shape[1]).to(x.dtype)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    loss = (1 - torch.exp(-bce)).pow(gamma) * bce
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss.sum(1).mean()


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Lovasz-softmax over the labelled pixels of the batch, averaged over the classes present."""
    valid = target != ignore_index
    prob = logits.softmax(1).movedim(1, -1)[valid]  # (P, C)
    labels = target[valid]
    losses = []
    for c in range(prob.shape[1]):
        fg = (labels == c).to(prob.dtype)
        if not bool(fg.any()):
            continue
        errors, order = (fg - prob[:, c]).abs().sort(descending=True)
        fg_sorted = fg[order]
        # The gradient of the Lovasz extension of the Jaccard loss at the sorted errors (Berman et al., Alg. 1).
        jaccard = 1 - (fg_sorted.sum() - fg_sorted.cumsum(0)) / (fg_sorted.sum() + (1 - fg_sorted).cumsum(0))
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors, grad))
    return torch.stack(losses).mean() if losses else logits.sum() * 0.0


def loss_names(name) -> list[str]:
    """``loss.name`` (one name or a list) as a list, each checked."""
    names = [name] if isinstance(name, str) else list(name) if isinstance(name, (list, tuple)) else None
    if not names:
        raise ValueError(f"loss.name={name!r}; expected one of {', '.join(LOSSES)}, or a list of them "
                         f"(e.g. loss.name=[ce,dice] loss.weights=[1.0,0.5])")
    for n in names:
        if n not in LOSSES:
            raise ValueError(f"loss.name={name!r}; expected one of {', '.join(LOSSES)}"
                             + (f" ({n!r} is not)" if len(names) > 1 else "")
                             + ", or a list of them (e.g. loss.name=[ce,dice] loss.weights=[1.0,0.5])")
    if "ce" in names and "ohem" in names:
        raise ValueError(f"loss.name={names}: ce and ohem are both cross-entropy; keep one")
    if len(set(names)) != len(names):
        raise ValueError(f"loss.name={names} names a loss twice; give it one weight in loss.weights instead")
    return names


class SegmentationLoss:
    """Per-pixel loss of one output: ``loss(logits, target)`` with logits at the target's size.

    A plain object, not an ``nn.Module``: it holds no parameters or buffers, so checkpoints and
    state-dict keys are the same whatever the loss.
    """

    def __init__(self, name="ce", ohem_thresh: float = 0.7, ohem_min_kept: int = 100000,
                 class_weight=None, ignore_index: int = 255, num_classes: int | None = None, weights=None,
                 smooth: float = 0.0, focal_gamma: float = 2.0, focal_alpha: float | None = None,
                 tversky_alpha: float = 0.5, tversky_beta: float = 0.5, tversky_gamma: float = 1.0):
        self.names = loss_names(name)
        if weights is None:
            weights = [1.0] * len(self.names)
        elif isinstance(weights, (int, float)) and len(self.names) == 1:
            weights = [weights]
        if isinstance(weights, str) or not hasattr(weights, "__len__") or len(weights) != len(self.names):
            raise ValueError(f"loss.weights={weights!r}; expected one weight per loss of loss.name={self.names} "
                             f"(or null: 1.0 each)")
        self.weights = [float(w) for w in weights]
        if any(not w >= 0 for w in self.weights):
            raise ValueError(f"loss.weights={weights!r}: weights must be >= 0")
        if not 0.0 <= float(ohem_thresh) <= 1.0:
            raise ValueError(f"loss.ohem_thresh={ohem_thresh}; expected a probability in [0, 1]")
        if int(ohem_min_kept) < 0:
            raise ValueError(f"loss.ohem_min_kept={ohem_min_kept}; expected a pixel count >= 0")
        if focal_alpha is not None and not 0.0 <= float(focal_alpha) <= 1.0:
            raise ValueError(f"loss.focal_alpha={focal_alpha}; expected null or a weight in [0, 1]")
        for key, value in (("smooth", smooth), ("focal_gamma", focal_gamma), ("tversky_alpha", tversky_alpha),
                           ("tversky_beta", tversky_beta), ("tversky_gamma", tversky_gamma)):
            if not float(value) >= 0:
                raise ValueError(f"loss.{key}={value}; expected a number >= 0")
        self.name = self.names[0] if len(self.names) == 1 else list(self.names)
        self.ohem_thresh, self.ohem_min_kept = float(ohem_thresh), int(ohem_min_kept)
        self.smooth, self.focal_gamma = float(smooth), float(focal_gamma)
        self.focal_alpha = None if focal_alpha is None else float(focal_alpha)
        self.tversky = (float(tversky_alpha), float(tversky_beta), float(tversky_gamma))
        self.ignore_index, self.num_classes = ignore_index, num_classes
        self.auto = class_weight == "auto"
        self.class_weight = None
        if class_weight is not None and not any(n in WEIGHTED for n in self.names):
            raise ValueError(f"loss.class_weight={class_weight!r} weighs the cross-entropy terms (ce, ohem) and "
                             f"loss.name={self.name!r} has none (segmentation_models_pytorch's {', '.join(self.names)} "
                             f"take no class weights); add ce, e.g. loss.name=[ce,{self.names[0]}], or set "
                             f"loss.class_weight=null")
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

    def term(self, name: str, logits: torch.Tensor, target: torch.Tensor, ohem: bool = True) -> torch.Tensor:
        """One loss of ``loss.name`` on ``logits`` (N, C, H, W) against ``target`` (N, H, W)."""
        if name in WEIGHTED:
            weight = None if self.class_weight is None else self.class_weight.to(logits.device, logits.dtype)
            if name == "ohem" and ohem:
                kept = ohem_keep(logits, target, self.ohem_thresh, self.ohem_min_kept, self.ignore_index)
                if not bool((kept != self.ignore_index).any()) and bool((target != self.ignore_index).any()):
                    return logits.sum() * 0.0  # every labelled pixel is easy (min_kept 0): nothing to learn here
                target = kept
            return F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index)
        if name == "focal":
            return focal_loss(logits, target, self.ignore_index, self.focal_gamma, self.focal_alpha)
        if name == "lovasz":
            return lovasz_softmax(logits, target, self.ignore_index)
        return region_loss(name, logits, target, self.ignore_index, self.smooth, *self.tversky)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, ohem: bool = True) -> torch.Tensor:
        """The weighted sum of the ``loss.name`` terms. ``ohem=False`` (the auxiliary head): OHEM's term is
        plain (weighted) cross-entropy; the other terms are the same on every head."""
        if self.auto and self.class_weight is None:
            raise ValueError("loss.class_weight=auto has not been resolved: the trainer counts the training "
                             "masks at set-up (SegmentationLoss.set_class_counts); outside it, give a list")
        total = 0.0
        for name, w in zip(self.names, self.weights):
            total = total + w * self.term(name, logits, target, ohem)
        return total
