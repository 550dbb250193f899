"""Evaluation: predict every image of a loader, accumulate one confusion matrix."""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..metrics import ConfusionMatrix


@torch.no_grad()
def evaluate(model, loader, num_classes: int, device="cpu", progress: bool = False, keep: int = 0):
    """Returns ``(metrics, samples)``: ``metrics`` from ``ConfusionMatrix.compute()`` (all-reduced across
    DDP ranks) and the first ``keep`` (image, mask, prediction) triples, for pictures."""
    model.eval()
    cm = ConfusionMatrix(num_classes)
    samples = []
    for batch in tqdm(loader, desc="val", disable=not progress, leave=False, dynamic_ncols=True):
        images = batch["image"].to(device, non_blocking=True)
        pred = model.predict(images).argmax(1).cpu()
        cm.update(pred, batch["mask"])
        for i in range(min(len(pred), keep - len(samples))):
            samples.append((batch["image"][i], batch["mask"][i], pred[i]))
    cm.all_reduce()
    return cm.compute(), samples
