"""The base of every dataset: pairs of (image file, mask file) read into training items, and the label
tables that turn a mask file's values into train ids.

A new dataset is one file: a subclass that lists its image and mask files (and their label
tables) and passes them to ``SegmentationDataset.__init__``, plus its conf/dataset/<name>.yaml.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .check import DatasetError, jpeg_is_complete, valid_values
from .labels import palette_for
from .transforms import build_val_transform


def label_table(mapping: dict[int, int] | None = None, num_classes: int = 0,
                ignored: Iterable[int] = ()) -> np.ndarray:
    """A 256-entry table: mask file value -> train id, 255 = ignore, -1 = not a valid value.

    ``mapping`` gives the classes' file values (default: the file holds train ids 0..num_classes-1);
    the values in ``ignored`` are valid but ignored (Cityscapes' unevaluated labelIds, ADE20K's 0 =
    "other"); 255 is ignore everywhere; every other value is invalid, so a mask of another format is
    reported instead of trained on.
    """
    lut = np.full(256, -1, np.int64)
    lut[list(ignored)] = 255
    if mapping is None:
        mapping = {k: k for k in range(num_classes)}
    lut[list(mapping)] = list(mapping.values())
    lut[255] = 255
    return lut


def read_image(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the image ({e.strerror})") from None
    # A JPEG cut short is looked for in the bytes: cv2.imread returns it with its missing rows filled
    # with grey, and only prints a warning.
    if data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):
        raise DatasetError(f"{path}: the JPEG file is truncated (no end-of-image marker after its image data); "
                           f"copy it again from the original")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None  # as imread: EXIF turns too
    if img is None:
        raise DatasetError(f"{path}: cannot read the image (empty, truncated or not an image file)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str) -> np.ndarray:
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DatasetError(f"{path}: cannot read the mask (missing, truncated or not an image file)")
    if mask.ndim != 2:
        raise DatasetError(f"{path}: a mask must be a single-channel label image, got shape {mask.shape}")
    return mask


class SegmentationDataset(Dataset):
    """Pairs of (image file, mask file); items are dicts with ``image``, ``mask`` and ``path``.

    ``transform`` is an albumentations pipeline ending in Normalize + ToTensorV2; without one, items
    are normalised at the files' own resolution (validation is evaluated at full resolution).
    A mask of ``None`` is an image to predict only: its mask is all 255 (ignore) and ``has_masks`` is
    False, so eval.py exports the predictions and skips the metrics.
    """

    classes: tuple[str, ...] = ()
    # train id -> the value the dataset's own label files use (identity here; see label_ids)
    file_ids: np.ndarray = np.arange(256, dtype=np.uint8)

    def __init__(self, images: list[str], masks: list[str | None], luts: list[np.ndarray], transform=None):
        self.images, self.masks, self.luts = images, masks, luts
        self.transform = transform if transform is not None else build_val_transform()
        self.has_masks = all(m is not None for m in masks)

    def label_ids(self, pred: np.ndarray) -> np.ndarray:
        """Train ids (H, W) -> the encoding of the dataset's label files (uint8), for exports."""
        return self.file_ids[np.asarray(pred, dtype=np.int64)]

    def prediction_name(self, path: str) -> str:
        """The name of an image's exported prediction, without suffix: the image's file name stem."""
        return os.path.splitext(os.path.basename(path))[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def palette(self) -> np.ndarray:
        """(K, 3) uint8: the colour of each class in pictures and colour exports (``dataset.palette`` for a
        folder; Cityscapes' colours for its classes; ``labels.readable_palette`` otherwise)."""
        own = getattr(self, "_palette", None)
        return own if own is not None else palette_for(self.num_classes, self.classes)[:self.num_classes]

    def __len__(self):
        return len(self.images)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw image (H, W, 3 uint8) and its mask in train ids (H, W uint8, 255 ignore)."""
        img = read_image(self.images[i])
        if self.masks[i] is None:
            return img, np.full(img.shape[:2], 255, np.uint8)
        raw = read_mask(self.masks[i])
        if raw.shape != img.shape[:2]:
            raise DatasetError(f"{self.masks[i]}: mask is {raw.shape[1]}x{raw.shape[0]} but its image "
                               f"{self.images[i]} is {img.shape[1]}x{img.shape[0]} (W x H)")
        if raw.dtype != np.uint8:
            raise DatasetError(f"{self.masks[i]}: expected an 8-bit label image, got {raw.dtype}")
        mask = self.luts[i][raw]
        if (mask < 0).any():
            bad = np.unique(raw[mask < 0]).tolist()
            raise DatasetError(f"{self.masks[i]}: invalid label value(s) {bad[:10]}{'...' if len(bad) > 10 else ''} "
                               f"for this file's format (valid: {valid_values(self.luts[i])})")
        return img, mask.astype(np.uint8)

    def class_pixel_counts(self, ignore_index: int = 255) -> np.ndarray:
        """Labelled pixels per class over every mask of the split, at the files' resolution (masks are
        read alone, no image, no transform): what ``loss.class_weight=auto`` weighs classes by."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for path, lut in zip(self.masks, self.luts):
            if path is None:
                continue
            mask = lut[read_mask(path)]
            if (mask < 0).any():
                raise DatasetError(f"{path}: invalid label value(s) {np.unique(read_mask(path)[mask < 0]).tolist()[:10]} "
                                   f"for this file's format (valid: {valid_values(lut)})")
            labelled = mask[(mask != ignore_index) & (mask < self.num_classes)]
            counts += np.bincount(labelled.ravel().astype(np.int64), minlength=self.num_classes)[:self.num_classes]
        return counts

    def __getitem__(self, i) -> dict:
        # The training sampler passes (index, seed): the augmentation of a sample is then a function
        # of its position in the run, whatever worker or process loads it, so a resumed run is exact.
        if isinstance(i, tuple):
            i, seed = i
            self.transform.set_random_seed(seed)
        img, mask = self.load(i)
        out = self.transform(image=img, mask=mask)
        return {"image": out["image"], "mask": torch.as_tensor(out["mask"]).long(), "path": self.images[i]}
