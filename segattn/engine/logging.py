"""What users read: the per-class table on the console, scalars and pictures in TensorBoard."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

from ..data.labels import colorize
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


def iou_table(metrics: dict, classes) -> str:
    """A plain-text table: class, IoU, Acc, then mIoU / mAcc / aAcc."""
    width = max(12, *(len(c) for c in classes))

    def pct(v):
        return "   nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"

    lines = [f"{'class':<{width}}    IoU    Acc", "-" * (width + 14)]
    for name, iou, acc in zip(classes, metrics["IoU"], metrics["Acc"]):
        lines.append(f"{name:<{width}} {pct(iou)} {pct(acc)}")
    lines.append("-" * (width + 14))
    lines.append(f"mIoU {pct(metrics['mIoU'])}  mAcc {pct(metrics['mAcc'])}  aAcc {pct(metrics['aAcc'])}")
    return "\n".join(lines)


def metrics_json(metrics: dict, classes, **extra) -> dict:
    """``metrics.json`` / ``eval.json``: top-level fractions, per-class dicts keyed by class name (NaN -> null)."""
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    out = {k: clean(metrics[k]) for k in ("mIoU", "mAcc", "aAcc")}
    out["IoU"] = {c: clean(v) for c, v in zip(classes, metrics["IoU"])}
    out["Acc"] = {c: clean(v) for c, v in zip(classes, metrics["Acc"])}
    out.update(extra)
    return out


def write_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Normalised (3, H, W) tensor -> (H, W, 3) uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image.float().cpu() * std + mean).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()


def prediction_grid(samples, num_classes: int) -> np.ndarray:
    """Rows of image | ground truth | prediction (Cityscapes palette) as one (H, W, 3) uint8 array."""
    rows = [np.concatenate([denormalize(img), colorize(mask.numpy(), num_classes), colorize(pred.numpy(), num_classes)], 1)
            for img, mask, pred in samples]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, 0)


def log_validation(writer, metrics: dict, classes, samples, step: int) -> None:
    writer.add_scalar("val/mIoU", metrics["mIoU"], step)
    writer.add_scalar("val/mAcc", metrics["mAcc"], step)
    writer.add_scalar("val/aAcc", metrics["aAcc"], step)
    for name, iou in zip(classes, metrics["IoU"]):
        if not math.isnan(iou):
            writer.add_scalar(f"val_iou/{name}", iou, step)
    if samples:
        writer.add_image("val/image_gt_pred", prediction_grid(samples, len(classes)), step, dataformats="HWC")
