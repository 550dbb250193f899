"""Albumentations 2.x pipelines for training and validation.

Every pipeline is ``Compose(strict=True)``: albumentations 2.x otherwise only warns about an
argument name it does not know (many 1.x names were renamed), and the augmentation would silently
not happen.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.pytorch import ToTensorV2
from pydantic import field_validator

from ..ops import size_hw

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


class CatMaxRatioCrop(A.RandomCrop):
    """Random crop in which no single class covers more than ``cat_max_ratio`` of the labelled pixels.

    As mmsegmentation's ``RandomCrop(cat_max_ratio=0.75)``: up to 10 tries, keeping the last one.
    It keeps crops from being all road or all sky, which would waste an iteration. Pads with
    ``fill_mask=255`` (ignore), never 0, when the image is smaller than the crop.
    """

    class InitSchema(A.RandomCrop.InitSchema):
        cat_max_ratio: float
        ignore_index: int

    def __init__(self, height: int, width: int, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX,
                 pad_if_needed: bool = True, pad_position: str = "center", border_mode: int = cv2.BORDER_CONSTANT,
                 fill: float = 0.0, fill_mask: float = IGNORE_INDEX, p: float = 1.0):
        super().__init__(height=height, width=width, pad_if_needed=pad_if_needed, pad_position=pad_position,
                         fill=fill, fill_mask=fill_mask, border_mode=border_mode, p=p)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        out = super().get_params_dependent_on_data(params, data)
        mask = data.get("mask")
        if mask is None or self.cat_max_ratio >= 1.0:
            return out
        pad = out["pad_params"]
        if pad is not None:
            mask = np.pad(mask, ((pad["pad_top"], pad["pad_bottom"]), (pad["pad_left"], pad["pad_right"])),
                          constant_values=self.ignore_index)
        for _ in range(10):
            x0, y0, x1, y1 = out["crop_coords"]
            labels, counts = np.unique(mask[y0:y1, x0:x1], return_counts=True)
            counts = counts[labels != self.ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
            out = super().get_params_dependent_on_data(params, data)
            out["pad_params"] = pad  # padding is deterministic given the shape except its position; keep one
        return out


class RandomResizeToScale(A.DualTransform):
    """mmsegmentation's ``RandomResize(scale=(long, short), ratio_range, keep_ratio=True)``.

    A ratio ``r`` is drawn from ``ratio_range`` and the image is resized, keeping its aspect ratio, to
    fit within ``int(long * r)`` x ``int(short * r)``: the size follows a fixed base scale, not the
    image's own size, so images of different sizes (ADE20K's) reach comparable scales. For an image
    of exactly the base scale (Cityscapes' 2048x1024 at (2048, 1024)) it equals a resize by ``r``.
    """

    class InitSchema(BaseTransformInitSchema):
        scale: tuple[int, int]
        ratio_range: tuple[float, float]
        interpolation: int
        mask_interpolation: int

        @field_validator("scale")
        @classmethod
        def _positive_scale(cls, v):
            if min(v) <= 0:
                raise ValueError(f"scale={v}: expected two positive edge lengths (long, short)")
            return v

        @field_validator("ratio_range")
        @classmethod
        def _ordered_ratios(cls, v):
            if not 0 < v[0] <= v[1]:
                raise ValueError(f"ratio_range={v}: expected 0 < low <= high")
            return v

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float] = (0.5, 2.0),
                 interpolation: int = cv2.INTER_LINEAR, mask_interpolation: int = cv2.INTER_NEAREST, p: float = 1.0):
        super().__init__(p=p)
        self.scale, self.ratio_range = tuple(scale), tuple(ratio_range)
        self.interpolation, self.mask_interpolation = interpolation, mask_interpolation

    @staticmethod
    def target_size(h: int, w: int, scale, ratio: float) -> tuple[int, int]:
        """(h, w) after the resize for ``ratio``, as mmcv computes it (truncated scale, rounded size)."""
        a, b = int(scale[0] * ratio), int(scale[1] * ratio)
        long, short = max(a, b), min(a, b)
        f = min(long / max(h, w), short / min(h, w))
        return int(h * f + 0.5), int(w * f + 0.5)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return {"size": self.target_size(h, w, self.scale, self.py_random.uniform(*self.ratio_range))}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=self.mask_interpolation)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range", "interpolation", "mask_interpolation")


def normalize_to_tensor(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list:
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def build_train_transform(crop_size, scale_range=(0.5, 2.0), cat_max_ratio=0.75, flip=True,
                          photometric=True, base_scale=None) -> A.Compose:
    """Random resize, crop, flip, photometric distortion, normalise.

    The resize ratio from ``scale_range`` applies to the image's own size, or, with ``base_scale``
    ``[long, short]`` (``dataset.base_scale``), to that base scale as mmseg's RandomResize does.

    ``photometric`` follows mmseg's PhotoMetricDistortion (brightness delta 32/255, contrast and
    saturation 0.5-1.5, hue delta 18 degrees) with albumentations' ColorJitter.
    """
    h, w = _crop(crop_size)
    lo, hi = scale_range
    if base_scale:
        resize = RandomResizeToScale(scale=_base_scale(base_scale), ratio_range=(lo, hi))
    else:
        resize = A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                               mask_interpolation=cv2.INTER_NEAREST, p=1.0)
    ts = [resize, CatMaxRatioCrop(height=h, width=w, cat_max_ratio=cat_max_ratio)]
    if flip:
        ts.append(A.HorizontalFlip(p=0.5))
    if photometric:
        ts.append(A.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=18 / 360, p=0.5))
    return A.Compose(ts + normalize_to_tensor(), strict=True)


def build_val_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> A.Compose:
    """Validation runs at the files' own resolution: normalise only (``segattn.load`` too)."""
    return A.Compose(normalize_to_tensor(mean, std), strict=True)


def _crop(crop_size) -> tuple[int, int]:
    return size_hw(crop_size, "dataset.crop_size")


def _base_scale(base_scale) -> tuple[int, int]:
    try:
        long, short = int(base_scale[0]), int(base_scale[1])
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"dataset.base_scale={base_scale!r}: expected [long edge, short edge], e.g. [2048, 512]") from None
    if long <= 0 or short <= 0:
        raise ValueError(f"dataset.base_scale={base_scale!r}: expected [long edge, short edge], e.g. [2048, 512]")
    return long, short
