"""What users read: the per-class table on the console, scalars and pictures in TensorBoard."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from ..config import TrainConfig
from ..data.labels import colorize, palette_for
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..io import atomic_write


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
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)


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


# viridis at five stops: dark (0) to yellow (1), readable in print and for colour-blind readers.
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64)


def confusion_image(confusion: torch.Tensor, size: int = 512) -> np.ndarray:
    """The confusion matrix (rows ground truth, columns prediction) as an (H, W, 3) uint8 heat map.

    Each row is normalised by its ground-truth pixels (the diagonal is the class accuracy, the rest
    of the row where that class's pixels went), so rare classes are as visible as road and sky.
    A strip of the class colours runs along the top and the left, as in the prediction grid.
    """
    m = confusion.double().cpu()
    k = m.shape[0]
    rows = (m / m.sum(1, keepdim=True).clamp(min=1)).numpy()
    pos = rows * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    heat = (_VIRIDIS[lo] + (pos - lo)[..., None] * (_VIRIDIS[lo + 1] - _VIRIDIS[lo])).round().astype(np.uint8)
    cell = max(1, size // k)
    heat = heat.repeat(cell, 0).repeat(cell, 1)
    colours = palette_for(k)[:k].repeat(cell, 0)  # (k * cell, 3)
    left = np.repeat(colours[:, None], cell, 1)
    top = np.concatenate([np.zeros((cell, cell, 3), np.uint8), np.repeat(colours[None], cell, 0)], 1)
    return np.concatenate([top, np.concatenate([left, heat], 1)], 0)


def log_train(writer, loss: float, lr: float, parts: dict, data_time_share: float, step: int) -> None:
    """The training scalars of one logged iteration: the loss, each output's loss, the lr, and the
    share of time spent waiting for data."""
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)
    for k, v in parts.items():
        writer.add_scalar(f"train/loss_{k}", float(v), step)
    writer.add_scalar("train/data_time_share", data_time_share, step)


def log_validation(writer, metrics: dict, classes, samples, step: int) -> None:
    writer.add_scalar("val/mIoU", metrics["mIoU"], step)
    writer.add_scalar("val/mAcc", metrics["mAcc"], step)
    writer.add_scalar("val/aAcc", metrics["aAcc"], step)
    for name, iou in zip(classes, metrics["IoU"]):
        if not math.isnan(iou):
            writer.add_scalar(f"val_iou/{name}", iou, step)
    if samples:
        writer.add_image("val/image_gt_pred", prediction_grid(samples, len(classes)), step, dataformats="HWC")
    if "confusion" in metrics:
        writer.add_image("val/confusion_matrix", confusion_image(metrics["confusion"]), step, dataformats="HWC")


def log_hparams(writer, cfg: dict | TrainConfig, metrics: dict, step: int) -> None:
    """The run's hyper-parameters with its final mIoU, for TensorBoard's HParams tab.

    Written into the run's own event file (``add_hparams`` would open a sub-run), so the HParams
    tab lists one session per run directory next to its scalars.
    """
    from torch.utils.tensorboard.summary import hparams

    cfg = TrainConfig.from_dict(cfg)
    crop = cfg.dataset.get("crop_size")
    hp = {
        "head": str(cfg.head["name"]),
        "backbone": str(cfg.backbone["name"]),
        "lr": float(cfg.optimizer.lr),
        "crop": "x".join(str(c) for c in crop) if crop else "none",
        "optimizer": str(cfg.optimizer.name),
        "batch_size": int(cfg.trainer.batch_size),
        "max_iters": int(cfg.trainer.max_iters),
        "dataset": str(cfg.dataset["name"]),
    }
    miou = float(metrics["mIoU"])
    for summary in hparams(hp, {"hparams/mIoU": miou}):
        writer.file_writer.add_summary(summary, step)
    writer.add_scalar("hparams/mIoU", miou, step)
