"""What users read: the per-class table on the console, metrics JSON, scalars and pictures in
TensorBoard. The pictures are drawn by ``segattn.viz``, where every renderer lives."""

from __future__ import annotations

import json
import math

from ..config import TrainConfig
from ..io import atomic_write
from ..viz import confusion_image, prediction_grid


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
    if "confusion" in metrics:  # rows ground truth, columns prediction, the class names on both axes
        writer.add_image("val/confusion_matrix", confusion_image(metrics["confusion"], class_names=classes), step,
                         dataformats="HWC")


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
        # what else tells two runs apart (the run folder's name says the same)
        "block_attention": str(cfg.backbone.get("block_attention") or "none"),
        "scale_attention": "/".join(map(str, cfg.model.scale_attention.scales or [])) or "none",
        "seed": int(cfg.seed),
    }
    miou = float(metrics["mIoU"])
    for summary in hparams(hp, {"hparams/mIoU": miou}):
        writer.file_writer.add_summary(summary, step)
    writer.add_scalar("hparams/mIoU", miou, step)
