"""Confusion-matrix metrics, accumulated over the whole dataset (torchvision references style)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """``update(pred, target)`` accumulates; ``compute()`` returns mIoU, mAcc, aAcc, IoU, Acc and the
    per-class Dice (F1), Precision and Recall with their means mDice, mPrecision, mRecall.

    Rows are ground truth, columns predictions. Pixels whose target is ``ignore_index`` (or any
    value outside ``[0, num_classes)``) are skipped. mIoU is the nan-mean over classes of the
    dataset-level matrix: a class absent from both prediction and ground truth has IoU NaN and
    does not count, unlike a mean of per-image IoUs. Every figure comes from the one matrix
    (mmsegmentation's IoU, Dice and F-score metrics; torchmetrics' ``MulticlassJaccardIndex``,
    ``MulticlassF1Score``, ... with ``average=None``/``"macro"`` agree, tests/test_metrics_full.py).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor):
        if pred.shape != target.shape:
            raise ValueError(f"ConfusionMatrix.update: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        n = self.num_classes
        pred, target = pred.reshape(-1).to(self.mat.device, torch.int64), target.reshape(-1).to(self.mat.device, torch.int64)
        keep = (target >= 0) & (target < n) & (target != self.ignore_index)
        self.mat += torch.bincount(n * target[keep] + pred[keep].clamp(0, n - 1), minlength=n * n).reshape(n, n)

    def all_reduce(self):
        """Sum the matrices of all processes (validation sharded across DDP ranks)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def compute(self) -> dict:
        h = self.mat.double()
        tp = h.diag()
        gt = h.sum(1)
        union = gt + h.sum(0) - tp
        pred = h.sum(0)
        iou = tp / union  # 0/0 -> NaN for classes absent everywhere
        acc = tp / gt  # the class's recall: NaN without ground-truth pixels
        precision = tp / pred  # NaN for a class never predicted
        dice = 2 * tp / (gt + pred)  # F1, the harmonic mean of precision and recall
        total = h.sum()

        def nanmean(t):
            t = t[~t.isnan()]
            return t.mean().item() if t.numel() else math.nan

        return {
            "mIoU": nanmean(iou),
            "mAcc": nanmean(acc),
            "aAcc": (tp.sum() / total).item() if total > 0 else math.nan,
            "IoU": iou.tolist(),
            "Acc": acc.tolist(),
            "mDice": nanmean(dice),
            "mPrecision": nanmean(precision),
            "mRecall": nanmean(acc),
            "Dice": dice.tolist(),
            "Precision": precision.tolist(),
            "Recall": acc.tolist(),
        }
