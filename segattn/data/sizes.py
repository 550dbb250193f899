"""The training crop against the training images' sizes: ``dataset.crop_size=auto`` (the folder default)
and a warning for a crop larger than every image (each crop then mostly padding, computed on all the same).

The sizes come from ``SAMPLED`` images spread over the training split, so the check costs the same for ten
images or a million. A folder's sampled samples are loaded whole (image and mask): a bad mask among them
stops the run here, before the first step, instead of when it is first drawn.
"""

from __future__ import annotations

import sys
import warnings

from PIL import Image

from ..ops import size_hw

SAMPLED = 16
AUTO_MAX = 512  # an auto crop's longest edge: the folder default's old 512x512 for larger pictures


def sampled_sizes(dataset, load: bool = False) -> list[tuple[int, int]]:
    """(H, W) of up to ``SAMPLED`` images spread over ``dataset``; ``load``: read each sample whole
    (``dataset.load``, which checks its mask), else only the image file's header."""
    n = len(dataset)
    picked = list(range(n)) if n <= SAMPLED else [i * n // SAMPLED for i in range(SAMPLED)]
    if load:
        return [tuple(dataset.load(i)[0].shape[:2]) for i in picked]
    sizes = []
    for i in picked:
        with Image.open(dataset.images[i]) as im:
            sizes.append((im.height, im.width))
    return sizes


def fit_crop(dataset_cfg: dict, train_set, verbose: bool = True) -> list[int]:
    """``dataset.crop_size`` for training: ``auto`` resolved to the smallest height and width of the sampled
    training images (each at most ``AUTO_MAX``), printed when ``verbose``; a given crop larger than every sampled image (with
    no ``base_scale``) warned about. Returns ``[H, W]``."""
    crop = dataset_cfg.get("crop_size")
    is_folder = dataset_cfg.get("name") == "folder"
    auto = isinstance(crop, str) and crop.lower() == "auto"
    if not auto and (dataset_cfg.get("base_scale") or not hasattr(train_set, "images") or not len(train_set)):
        return list(size_hw(crop, "dataset.crop_size"))
    if not auto:
        size_hw(crop, "dataset.crop_size")  # a bad value is named before any file is read
    sizes = sampled_sizes(train_set, load=is_folder)
    low_h, low_w = min(h for h, _ in sizes), min(w for _, w in sizes)
    high_h, high_w = max(h for h, _ in sizes), max(w for _, w in sizes)
    if auto:
        crop = [min(low_h, AUTO_MAX), min(low_w, AUTO_MAX)]
        if verbose:
            print(f"dataset.crop_size=auto: {crop} (the smallest height and width of {len(sizes)} training images, "
                  f"{low_h}x{low_w} to {high_h}x{high_w}, each edge at most {AUTO_MAX}; set dataset.crop_size=[H,W] "
                  f"to choose)", file=sys.stderr)
        return crop
    h, w = size_hw(crop, "dataset.crop_size")
    if verbose and (h > high_h or w > high_w):
        padding = 1 - min(h, high_h) * min(w, high_w) / (h * w)
        warnings.warn(
            f"dataset.crop_size={[h, w]} is larger than the training images (the largest of {len(sizes)} read is "
            f"{high_h}x{high_w}): every crop is padded with ignored pixels to {h}x{w}, {100 * padding:.0f} % of it "
            f"padding at scale 1, and every step computes on that padding. "
            + ("dataset.crop_size=auto (the folder default) fits the crop to the images; or set "
               if is_folder else "Set ")
            + f"e.g. dataset.crop_size=[{min(h, low_h)},{min(w, low_w)}].", stacklevel=2)
    return [h, w]
