"""Evaluation: predict every image of a loader, accumulate one confusion matrix; per-image scores and
the time it took, for eval.py."""

from __future__ import annotations

import csv
import io
import math
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..metrics import ConfusionMatrix
from ..models.inference import image_batch, inference_kwargs


def same_size_batches(batch):
    """A loader's batch as batches of one image size each: a dict (default collation) passes as it is;
    a list of items (``collate_fn=list``, images of any sizes) becomes a dict per run of one size."""
    if isinstance(batch, dict):
        yield batch
        return
    run = []
    for item in batch:
        if run and item["image"].shape != run[0]["image"].shape:
            yield _stack(run)
            run = []
        run.append(item)
    if run:
        yield _stack(run)


def _stack(items):
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "path": [i["path"] for i in items]}


@torch.no_grad()
def evaluate(model, loader, num_classes: int, device="cpu", progress: bool = False, keep: int = 0,
             inference: dict | None = None, on_prediction=None, on_scored=None):
    """Returns ``(metrics, samples)``: ``metrics`` from ``ConfusionMatrix.compute()`` (all-reduced across
    DDP ranks) plus the matrix itself under ``confusion``, and the first ``keep`` (image, mask,
    prediction) triples, for pictures.

    ``inference`` is the dataset's ``inference`` config node (mode, crop_size, stride, scales, flip,
    base_scale, window_batch; default whole-image); a loader with ``collate_fn=list`` gives lists of items,
    predicted in batches of one image size (``inference.batch_size``, see ``val_loader``); ``on_prediction(pred, image_path)`` sees every prediction
    (train ids, (H, W)), e.g. to export it; ``on_scored(pred, mask, image_path)`` with its mask (per-image scores).
    ``metrics["timing"]``: ``images``, ``seconds`` (the whole loop: loading, prediction, scoring) and
    ``model_seconds`` (the predictions alone, the device synchronised).
    """
    kwargs = inference_kwargs(inference)
    model.eval()
    cm = ConfusionMatrix(num_classes)
    samples = []
    batches = (b for items in tqdm(loader, desc="val", disable=not progress, leave=False, dynamic_ncols=True)
               for b in same_size_batches(items))
    count, model_seconds, start = 0, 0.0, time.perf_counter()
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        _synchronize(images.device)
        tic = time.perf_counter()
        pred = model.predict(images, **kwargs).argmax(1)
        _synchronize(pred.device)
        model_seconds += time.perf_counter() - tic
        pred = pred.cpu()
        count += len(pred)
        cm.update(pred, batch["mask"])
        if on_prediction is not None:
            for p, path in zip(pred, batch["path"]):
                on_prediction(p, path)
        if on_scored is not None:
            for p, m, path in zip(pred, batch["mask"], batch["path"]):
                on_scored(p, m, path)
        for i in range(min(len(pred), keep - len(samples))):
            samples.append((batch["image"][i], batch["mask"][i], pred[i]))
    cm.all_reduce()
    metrics = cm.compute()
    metrics["confusion"] = cm.mat.clone()
    metrics["timing"] = {"images": count, "seconds": time.perf_counter() - start, "model_seconds": model_seconds}
    return metrics, samples


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_inference(inference: dict | None) -> str:
    """``whole``, ``slide 769x769 windows, stride 513x513``, ``scales [0.5, 1.0] + flip``: how images are predicted."""
    node = {k: v for k, v in (inference or {}).items() if v is not None}
    mode = node.get("mode", "whole")
    text = mode
    if mode == "slide":
        crop, stride = node.get("crop_size"), node.get("stride")
        text += f" {crop[0]}x{crop[1]} windows, stride {stride[0]}x{stride[1]}" if crop and stride else ""
    scales = node.get("scales")
    if scales and list(scales) != [1.0]:
        text += f", scales {list(scales)}"
    if node.get("flip"):
        text += " + flip"
    if node.get("base_scale"):
        text += f", resized to fit {list(node['base_scale'])} first"
    return text


def speed(timing: dict, inference: dict | None, device, batch_size: int) -> dict:
    """eval.json's ``speed``: images/s and ms per image over the whole evaluation, the model's share, and
    what they were measured with."""
    n, seconds, model = timing["images"], timing["seconds"], timing["model_seconds"]
    return {"images_per_s": n / seconds if seconds > 0 else math.nan,
            "ms_per_image": 1000 * seconds / max(n, 1), "model_ms_per_image": 1000 * model / max(n, 1),
            "images": n, "seconds": seconds, "inference": describe_inference(inference),
            "batch_size": batch_size, "device": str(device)}


def speed_line(s: dict) -> str:
    return (f"speed: {s['images_per_s']:.2f} images/s, {s['ms_per_image']:.1f} ms per image ({s['inference']}, "
            f"batch {s['batch_size']}, {s['device']}; the model alone {s['model_ms_per_image']:.1f} ms per image; "
            f"{s['images']} images in {s['seconds']:.2f} s, loading included)")


class PerImageScores:
    """``on_scored`` for :func:`evaluate`: one row per image -- its mIoU over the classes present in its
    ground truth or prediction (as the dataset's mIoU, a class absent from both does not count), its pixel
    accuracy over the labelled pixels, and each class's IoU (empty where absent from both)."""

    def __init__(self, classes, ignore_index: int = 255):
        self.classes, self.ignore_index = list(classes), ignore_index
        self.rows = []

    def __call__(self, pred, mask, path: str) -> None:
        cm = ConfusionMatrix(len(self.classes), self.ignore_index)
        cm.update(pred, mask)
        m = cm.compute()
        self.rows.append((path, m["mIoU"], m["aAcc"], int(cm.mat.sum()), m["IoU"]))

    def worst(self, n: int = 3) -> list:
        """The ``n`` images of lowest mIoU (images without labelled pixels last)."""
        return sorted(self.rows, key=lambda r: (math.isnan(r[1]), r[1]))[:n]

    def csv(self) -> str:
        """``per_image.csv``: worst mIoU first; fractions in [0, 1], empty for NaN."""
        def cell(v):
            return "" if isinstance(v, float) and math.isnan(v) else f"{v:.6f}"

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "mIoU", "pixel_accuracy", "labelled_pixels", *(f"IoU/{c}" for c in self.classes)])
        for path, miou, acc, pixels, iou in self.worst(len(self.rows)):
            w.writerow([path, cell(miou), cell(acc), pixels, *(cell(v) for v in iou)])
        return buf.getvalue()


def val_loader(dataset, inference: dict | None, num_workers: int, **kwargs):
    """The loader of validation and eval.py: images at their own size, ``inference.batch_size`` at a
    time (as lists: :func:`same_size_batches` stacks the runs of one size)."""
    return DataLoader(dataset, batch_size=image_batch(inference), shuffle=False, num_workers=num_workers,
                      collate_fn=list, **kwargs)
