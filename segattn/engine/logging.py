"""What users read: the per-class table on the console, metrics JSON, scalars and pictures in
TensorBoard (and the other trackers of ``logger``; each ``writer`` here is a
``segattn.engine.trackers.Tracker``). The pictures are drawn by ``segattn.viz``, where every renderer lives."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sys

from ..config import TrainConfig
from ..io import atomic_write
from ..viz import confusion_image, prediction_grid


def iou_table(metrics: dict, classes, full: bool = False) -> str:
    """A plain-text table: class, IoU, Acc, then mIoU / mAcc / aAcc; ``full`` (eval.py) adds each
    class's Dice (F1) and Precision (Acc is its recall) and their means."""
    width = max(12, *(len(c) for c in classes))

    def pct(v):
        return "   nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"

    full = full and "Dice" in metrics
    header = f"{'class':<{width}}    IoU    Acc" + ("   Dice   Prec" if full else "")
    lines = [header, "-" * len(header)]
    for i, (name, iou, acc) in enumerate(zip(classes, metrics["IoU"], metrics["Acc"])):
        extra = f" {pct(metrics['Dice'][i])} {pct(metrics['Precision'][i])}" if full else ""
        lines.append(f"{name:<{width}} {pct(iou)} {pct(acc)}{extra}")
    lines.append("-" * len(header))
    lines.append(f"mIoU {pct(metrics['mIoU'])}  mAcc {pct(metrics['mAcc'])}  aAcc {pct(metrics['aAcc'])}")
    if full:
        lines.append(f"mDice {pct(metrics['mDice'])}  mPrecision {pct(metrics['mPrecision'])}  "
                     f"mRecall {pct(metrics['mRecall'])}  (Acc is the recall)")
    return "\n".join(lines)


def metrics_json(metrics: dict, classes, **extra) -> dict:
    """``metrics.json`` / ``eval.json``: top-level fractions, per-class dicts keyed by class name (NaN -> null)."""
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    out = {k: clean(metrics[k]) for k in ("mIoU", "mAcc", "aAcc")}
    out.update({k: clean(metrics[k]) for k in ("mDice", "mPrecision", "mRecall") if k in metrics})
    for key in ("IoU", "Acc", "Dice", "Precision", "Recall"):
        if key in metrics:
            out[key] = {c: clean(v) for c, v in zip(classes, metrics[key])}
    out.update(extra)
    return out


def confusion_csv(confusion, classes) -> str:
    """The confusion matrix as CSV: a header of the predicted classes, one row per ground-truth class
    (its name first), pixel counts."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ground truth \\ prediction", *classes])
    for name, row in zip(classes, confusion.tolist()):
        w.writerow([name, *(int(v) for v in row)])
    return buf.getvalue()


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


def peak_memory_mib(device) -> float | None:
    """The process's peak memory so far: the CUDA allocator's on a GPU, the resident set (ru_maxrss) on
    the CPU; None where neither can be read."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class LogWindow:
    """Iteration and data-loading times since the last log line, for mmsegmentation's log-line facts:
    time per iteration, data time, ETA (from the current pace; validation not counted), peak memory."""

    def __init__(self):
        self.iters, self.time, self.data = 0, 0.0, 0.0

    def add(self, iter_s: float, data_s: float) -> None:
        self.iters += 1
        self.time += iter_s
        self.data += data_s

    def line(self, step: int, max_iters: int, stop_at: int, loss: float, lr: float, device) -> str:
        """``iter 10/80  loss 2.345  lr 9.0e-03  time 1.52 s/it  data 0.05 s/it  eta 0:01:46  memory 812 MiB``;
        the window starts again."""
        per_iter, data = self.time / max(self.iters, 1), self.data / max(self.iters, 1)
        eta = datetime.timedelta(seconds=round(per_iter * max(stop_at - step, 0)))
        mem = peak_memory_mib(device)
        self.__init__()
        return (f"iter {step}/{max_iters}  loss {loss:.4f}  lr {lr:.3e}  time {per_iter:.3f} s/it  "
                f"data {data:.3f} s/it  eta {eta}" + (f"  memory {mem:.0f} MiB" if mem is not None else ""))


class _Tee:
    """A console stream that also appends what it prints to a log file; progress-bar redraws (``\r``)
    stay on the console only."""

    def __init__(self, stream, log):
        self._stream, self._log, self._skip_newline = stream, log, False

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        if "\r" in text or "\x1b[" in text:  # a progress bar redrawing itself
            self._skip_newline = True
        elif not (self._skip_newline and text == "\n"):
            self._log.write(text)
            self._log.flush()
            self._skip_newline = False
        return n

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding ...: the console's
        return getattr(self._stream, name)


@contextlib.contextmanager
def console_log(path: str | None):
    """``with console_log(<run>/train.log):`` what is printed on stdout and stderr is also appended to
    ``path`` (progress bars excepted); None: nothing is kept."""
    if path is None:
        yield None
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            yield log
        finally:
            sys.stdout, sys.stderr = saved
def log_residual_scales(writer, scales: dict[str, float], step: int) -> None:
    """``train/gamma/<parameter>``: the head's zero-initialised residual scales
    (``segattn.models.residual_scales``), so a branch that stays switched off can be seen."""
    for name, value in scales.items():
        writer.add_scalar(f"train/gamma/{name}", value, step)


def log_validation(writer, metrics: dict, classes, samples, step: int, palette=None) -> None:
    """Scalars, the image | ground truth | prediction grid and the confusion matrix (``palette``: the
    dataset's class colours)."""
    writer.add_scalar("val/mIoU", metrics["mIoU"], step)
    writer.add_scalar("val/mAcc", metrics["mAcc"], step)
    writer.add_scalar("val/aAcc", metrics["aAcc"], step)
    for name, iou in zip(classes, metrics["IoU"]):
        if not math.isnan(iou):
            writer.add_scalar(f"val_iou/{name}", iou, step)
    if samples:
        writer.add_image("val/image_gt_pred", prediction_grid(samples, len(classes), palette), step, dataformats="HWC")
    if "confusion" in metrics:  # rows ground truth, columns prediction, the class names on both axes
        writer.add_image("val/confusion_matrix", confusion_image(metrics["confusion"], class_names=classes, palette=palette), step,
                         dataformats="HWC")


def log_hparams(writer, cfg: dict | TrainConfig, metrics: dict, step: int) -> None:
    """The run's hyper-parameters with its final mIoU (TensorBoard's HParams tab; ``writer``: a
    ``segattn.engine.trackers.Tracker``)."""
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
    writer.add_hparams(hp, {"hparams/mIoU": float(metrics["mIoU"])}, step)
