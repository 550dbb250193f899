"""Independent re-implementations of segmentation_models_pytorch's multiclass losses, for equivalence tests.

Written from smp's own sources (not from segattn), keeping their shapes and steps:
qubvel-org/segmentation_models.pytorch ``segmentation_models_pytorch/losses/{dice,jaccard,tversky,focal,
lovasz,_functional}.py`` (``mode="multiclass"``, ``from_logits=True``, ``ignore_index`` set, ``classes``
None, ``log_loss`` False). smp is not a dependency; these follow its code line by line. Not collected by
pytest (no ``test_`` prefix); used by tests/test_losses.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _multiclass_inputs(y_pred, y_true, ignore_index):
    """DiceLoss.forward up to compute_score: probabilities and one-hot targets, (N, C, H*W), ignore zeroed."""
    y_pred = y_pred.log_softmax(dim=1).exp()
    bs, num_classes = y_true.size(0), y_pred.size(1)
    y_true = y_true.view(bs, -1)
    y_pred = y_pred.view(bs, num_classes, -1)
    mask = y_true != ignore_index
    y_pred = y_pred * mask.unsqueeze(1)
    y_true = F.one_hot((y_true * mask).to(torch.long), num_classes)
    y_true = y_true.permute(0, 2, 1) * mask.unsqueeze(1)
    return y_pred, y_true.type_as(y_pred)


def _aggregate(scores, y_true, dims):
    loss = 1.0 - scores
    loss = loss * (y_true.sum(dims) > 0).to(loss.dtype)  # classes without true pixels contribute 0
    return loss


def smp_dice(y_pred, y_true, ignore_index=255, smooth=0.0, eps=1e-7):
    y_pred, y_true = _multiclass_inputs(y_pred, y_true, ignore_index)
    dims = (0, 2)
    intersection = torch.sum(y_pred * y_true, dim=dims)
    cardinality = torch.sum(y_pred + y_true, dim=dims)
    scores = (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    return _aggregate(scores, y_true, dims).mean()


def smp_jaccard(y_pred, y_true, ignore_index=255, smooth=0.0, eps=1e-7):
    y_pred, y_true = _multiclass_inputs(y_pred, y_true, ignore_index)
    dims = (0, 2)
    intersection = torch.sum(y_pred * y_true, dim=dims)
    cardinality = torch.sum(y_pred + y_true, dim=dims)
    union = cardinality - intersection
    scores = (intersection + smooth) / (union + smooth).clamp_min(eps)
    return _aggregate(scores, y_true, dims).mean()


def smp_tversky(y_pred, y_true, ignore_index=255, smooth=0.0, eps=1e-7, alpha=0.5, beta=0.5, gamma=1.0):
    y_pred, y_true = _multiclass_inputs(y_pred, y_true, ignore_index)
    dims = (0, 2)
    intersection = torch.sum(y_pred * y_true, dim=dims)
    fp = torch.sum(y_pred * (1.0 - y_true), dim=dims)
    fn = torch.sum((1 - y_pred) * y_true, dim=dims)
    scores = (intersection + smooth) / (intersection + alpha * fp + beta * fn + smooth).clamp_min(eps)
    return _aggregate(scores, y_true, dims).mean() ** gamma


def _focal_loss_with_logits(output, target, gamma=2.0, alpha=None):
    target = target.type(output.type())
    logpt = F.binary_cross_entropy_with_logits(output, target, reduction="none")
    pt = torch.exp(-logpt)
    loss = (1.0 - pt).pow(gamma) * logpt
    if alpha is not None:
        loss *= alpha * target + (1 - alpha) * (1 - target)
    return loss.mean()


def smp_focal(y_pred, y_true, ignore_index=255, gamma=2.0, alpha=None):
    num_classes = y_pred.size(1)
    loss = 0
    not_ignored = y_true != ignore_index
    for cls in range(num_classes):
        cls_y_true = (y_true == cls).long()[not_ignored]
        cls_y_pred = y_pred[:, cls, ...][not_ignored]
        loss += _focal_loss_with_logits(cls_y_pred, cls_y_true, gamma, alpha)
    return loss


def _lovasz_grad(gt_sorted):
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def smp_lovasz(y_pred, y_true, ignore_index=255):
    probas = y_pred.softmax(dim=1)
    C = probas.size(1)
    probas = torch.movedim(probas, 1, -1).contiguous().view(-1, C)
    labels = y_true.view(-1)
    valid = labels != ignore_index
    probas, labels = probas[valid], labels[valid]
    losses = []
    for c in range(C):
        fg = (labels == c).type_as(probas)
        if fg.sum() == 0:
            continue
        errors = (fg - probas[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[perm])))
    if not losses:
        return 0
    acc = losses[0]
    for v in losses[1:]:
        acc = acc + v
    return acc / len(losses)
