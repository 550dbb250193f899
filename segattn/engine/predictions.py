"""Prediction export: one PNG per image, in the format an official evaluation or a person reads.

- ``labelids``: the dataset's own label encoding (Cityscapes labelIds, ADE20K's 1..150), what the
  official Cityscapes scripts and test server read;
- ``trainids``: the class indices 0..K-1 the model predicts;
- ``color``: the palette picture.

Files are ``<export_dir>/<name>_<labelIds|labelTrainIds|color>.png`` where ``<name>`` is the
dataset's ``prediction_name`` of the image: ``<city>_<seq>_<frame>`` for Cityscapes (the official
scripts look predictions up by that prefix), the image's relative path without extension otherwise.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..data.labels import colorize
from ..io import atomic_write

FORMATS = {"labelids": "labelIds", "trainids": "labelTrainIds", "color": "color"}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"export_format={fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def encode(pred: np.ndarray, fmt: str, dataset) -> np.ndarray:
    """Train ids (H, W) -> the array written for ``fmt``: (H, W) uint8, or (H, W, 3) for ``color``."""
    pred = np.asarray(pred)
    if fmt == "trainids":
        return pred.astype(np.uint8)
    if fmt == "labelids":
        return dataset.label_ids(pred)
    if fmt == "color":
        return colorize(pred, dataset.palette)
    raise ValueError(f"export_format={fmt!r}; expected one of {', '.join(FORMATS)}")


def write_png(array: np.ndarray, path: str) -> None:
    """Written to a temporary file and renamed, so a killed export never leaves a truncated PNG."""
    with atomic_write(path) as f:
        Image.fromarray(array).save(f, format="PNG")


class PredictionWriter:
    """``writer(pred, image_path)`` writes one prediction (train ids, (H, W)) into ``out_dir`` as ``fmt``."""

    def __init__(self, out_dir: str, fmt: str, dataset):
        self.out_dir, self.fmt, self.dataset = out_dir, check_format(fmt), dataset
        self.written = 0

    def path_for(self, image_path: str) -> str:
        return os.path.join(self.out_dir, f"{self.dataset.prediction_name(image_path)}_{FORMATS[self.fmt]}.png")

    def __call__(self, pred, image_path: str) -> str:
        pred = pred.numpy() if hasattr(pred, "numpy") else np.asarray(pred)
        path = self.path_for(image_path)
        write_png(encode(pred, self.fmt, self.dataset), path)
        self.written += 1
        return path
