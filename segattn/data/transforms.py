"""Albumentations 2.x pipelines for training and validation.

Every pipeline is ``Compose(strict=True)``: albumentations 2.x otherwise only warns about an
argument name it does not know (many 1.x names were renamed), and the augmentation would silently
not happen.

``dataset.augment`` adds the user's own albumentations transforms to the training pipeline, from the
config: a list of ``{name: <albumentations class>, <argument>: <value>, ...}`` (``OneOf`` / ``SomeOf``
take ``transforms: [...]`` of the same form), built by albumentations' own deserialisation
(``A.from_dict``, each transform with ``strict=True``), so every transform albumentations registers is
available with its own argument checks. They run after the geometric pipeline (resize, crop, flip) and
the photometric distortion, before normalisation: on the training crop (a dropout hole or a blur is
sized relative to what the network sees, and costs crop-sized work, not full-image work) and on uint8
pixels in 0-255, the input albumentations' defaults are written for.
"""

from __future__ import annotations

import difflib
import inspect

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


def build_augment(augment, crop_size=None) -> list:
    """``dataset.augment`` (a list of ``{name: ..., <arguments>}``, or null) as albumentations transforms.

    Built with ``A.from_dict`` in strict mode: a name albumentations does not have, or an argument it
    refuses, raises one ValueError naming ``dataset.augment[i]`` and quoting albumentations' message.
    With ``crop_size`` the transforms are run once on a blank crop: they must keep its size (a batch
    holds crops of one size) and give an image back (normalisation and ToTensorV2 come after them)."""
    if augment is None:
        return []
    if isinstance(augment, dict) or isinstance(augment, str) or not isinstance(augment, (list, tuple)):
        raise ValueError(f"dataset.augment={augment!r}: expected a list of transforms, e.g. "
                         f"'dataset.augment=[{{name: CoarseDropout, p: 0.5}}, {{name: GaussNoise, p: 0.2}}]'")
    transforms = [_from_config(t, f"dataset.augment[{i}]") for i, t in enumerate(augment)]
    if crop_size is not None and transforms:
        h, w = _crop(crop_size)
        try:
            out = A.Compose(transforms, strict=True)(image=np.zeros((h, w, 3), np.uint8),
                                                     mask=np.zeros((h, w), np.uint8))
        except Exception as e:
            raise ValueError(f"dataset.augment: the transforms fail on a {h}x{w} crop: albumentations says: "
                             f"{_one_line(e)}") from None
        image, mask = out["image"], out["mask"]
        if not isinstance(image, np.ndarray) or image.shape != (h, w, 3) or np.shape(mask) != (h, w):
            raise ValueError(f"dataset.augment: the transforms turn a {h}x{w} crop (dataset.crop_size) into "
                             f"{type(image).__name__} of shape {tuple(image.shape)}; they must keep the crop's "
                             f"size and give an image back (a batch holds crops of one size; normalisation and "
                             f"ToTensorV2 are added after them)")
    return transforms


def _from_config(node, where: str):
    """One ``{name: ..., ...}`` node as albumentations' serialised form, then ``A.from_dict``."""
    if not isinstance(node, dict) or not ("name" in node or "__class_fullname__" in node):
        raise ValueError(f"{where}={node!r}: expected a mapping with the albumentations transform's name and its "
                         f"arguments, e.g. {{name: GaussNoise, p: 0.2}}")
    args = dict(node)
    name = str(args.pop("name", None) or args.pop("__class_fullname__"))
    from albumentations.core.serialization import SERIALIZABLE_REGISTRY, shorten_class_name

    cls = SERIALIZABLE_REGISTRY.get(shorten_class_name(name))
    if cls is None or not issubclass(cls, A.BasicTransform | A.BaseCompose):
        known = [n for n, c in SERIALIZABLE_REGISTRY.items() if issubclass(c, A.BasicTransform | A.BaseCompose)]
        close = difflib.get_close_matches(name, known, n=3)
        raise ValueError(f"{where}: albumentations {A.__version__} has no transform {name!r}"
                         + (f"; did you mean {' or '.join(close)}?" if close else "")
                         + " (the names are albumentations' class names: https://albumentations.ai/docs/)")
    if name in ("Normalize", "ToTensorV2"):
        raise ValueError(f"{where}: {name} is already the pipeline's last step (after dataset.augment); leave it "
                         f"out of dataset.augment")
    if "transforms" in args:  # OneOf, SomeOf, Sequential: their children in the same form
        children = args["transforms"]
        if not isinstance(children, (list, tuple)):
            raise ValueError(f"{where}.transforms={children!r}: expected a list of transforms")
        args["transforms"] = [_from_config(c, f"{where}.transforms[{i}]").to_dict()["transform"]
                              for i, c in enumerate(children)]
    if "p" not in args:  # the class's own default (A.from_dict would use 0.5, with a warning)
        default = inspect.signature(cls.__init__).parameters.get("p")
        if default is not None and default.default is not inspect.Parameter.empty:
            args["p"] = default.default
    if "InitSchema" in vars(cls):  # its arguments are checked by that schema: strict makes an unknown one an
        args.setdefault("strict", True)  # error, not a warning (other classes refuse one with a TypeError)
    try:
        return A.from_dict({"transform": {"__class_fullname__": name, **args}})
    except Exception as e:
        raise ValueError(f"{where} ({name}): albumentations refuses it: {_one_line(e)}") from None


def _one_line(error: Exception) -> str:
    """albumentations' (pydantic's) message on one line, without the link to pydantic's docs."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.strip().startswith("For further information")]
    return "; ".join(lines) or type(error).__name__


def build_train_transform(crop_size, scale_range=(0.5, 2.0), cat_max_ratio=0.75, flip=True,
                          photometric=True, base_scale=None, augment=None) -> A.Compose:
    """Random resize, crop, flip, photometric distortion, the ``augment`` transforms (``dataset.augment``,
    see :func:`build_augment`), normalise.

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
    return A.Compose(ts + build_augment(augment, crop_size) + normalize_to_tensor(), strict=True)


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
