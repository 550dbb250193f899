"""Evaluation: predict every image of a loader, accumulate one confusion matrix."""

from __future__ import annotations

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
             inference: dict | None = None, on_prediction=None):
    """Returns ``(metrics, samples)``: ``metrics`` from ``ConfusionMatrix.compute()`` (all-reduced across
    DDP ranks) plus the matrix itself under ``confusion``, and the first ``keep`` (image, mask,
    prediction) triples, for pictures.

    ``inference`` is the dataset's ``inference`` config node (mode, crop_size, stride, scales, flip,
    base_scale, window_batch; default whole-image); a loader with ``collate_fn=list`` gives lists of items,
    predicted in batches of one image size (``inference.batch_size``, see ``val_loader``); ``on_prediction(pred, image_path)`` sees every prediction
    (train ids, (H, W)), e.g. to export it.
    """
    kwargs = inference_kwargs(inference)
    model.eval()
    cm = ConfusionMatrix(num_classes)
    samples = []
    batches = (b for items in tqdm(loader, desc="val", disable=not progress, leave=False, dynamic_ncols=True)
               for b in same_size_batches(items))
    for batch in batches:
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


def val_loader(dataset, inference: dict | None, num_workers: int, **kwargs):
    """The loader of validation and eval.py: images at their own size, ``inference.batch_size`` at a
    time (as lists: :func:`same_size_batches` stacks the runs of one size)."""
    return DataLoader(dataset, batch_size=image_batch(inference), shuffle=False, num_workers=num_workers,
                      collate_fn=list, **kwargs)
