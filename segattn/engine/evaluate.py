"""Evaluation: predict every image of a loader, accumulate one confusion matrix."""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..metrics import ConfusionMatrix
from ..models.inference import inference_kwargs


@torch.no_grad()
def evaluate(model, loader, num_classes: int, device="cpu", progress: bool = False, keep: int = 0,
             inference: dict | None = None, on_prediction=None):
    """Returns ``(metrics, samples)``: ``metrics`` from ``ConfusionMatrix.compute()`` (all-reduced across
    DDP ranks) plus the matrix itself under ``confusion``, and the first ``keep`` (image, mask,
    prediction) triples, for pictures.

    ``inference`` is the dataset's ``inference`` config node (mode, crop_size, stride, scales, flip,
    base_scale; default whole-image); ``on_prediction(pred, image_path)`` sees every prediction
    (train ids, (H, W)), e.g. to export it.
    """
    kwargs = inference_kwargs(inference)
    model.eval()
    cm = ConfusionMatrix(num_classes)
    samples = []
    for batch in tqdm(loader, desc="val", disable=not progress, leave=False, dynamic_ncols=True):
        images = batch["image"].to(device, non_blocking=True)
        pred = model.predict(images, **kwargs).argmax(1).cpu()
        cm.update(pred, batch["mask"])
        if on_prediction is not None:
            for p, path in zip(pred, batch["path"]):
                on_prediction(p, path)
        for i in range(min(len(pred), keep - len(samples))):
            samples.append((batch["image"][i], batch["mask"][i], pred[i]))
    cm.all_reduce()
    metrics = cm.compute()
    metrics["confusion"] = cm.mat.clone()
    return metrics, samples
