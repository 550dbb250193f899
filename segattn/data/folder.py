"""Any folder of images, with an optional parallel folder of masks and a class list from the config."""

from __future__ import annotations

import hashlib
import os
import sys
import warnings

import cv2
import numpy as np

from .base import SegmentationDataset, label_table
from .check import missing_masks
from .labels import check_palette

# How many masks, spread over the split, are read when the dataset is built to look for 0/255 masks.
SAMPLED_MASKS = 16

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

LAYOUT = """\
  <images>/<name>.<jpg|png|...>      (sub-folders allowed)
  <masks>/<name>.png                  (same relative path and name; 8-bit, value k = classes[k], 255 = ignore)
      with dataset=folder: <images> = <root>/<image_dir>/<split>, <masks> = <root>/<mask_dir>/<split>
      (image_dir: images, mask_dir: masks by default; mask_dir: null predicts the images only)"""


def list_images(directory: str) -> list[str]:
    found = []
    for parent, _, files in os.walk(directory):
        found += [os.path.join(parent, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def in_val_split(relative_path: str, fraction: float, seed: int) -> bool:
    """Whether an image belongs to the validation part of ``dataset.val_fraction``: a hash of the seed and
    the image's path relative to the image folder, read as a number in [0, 1), below ``fraction``. Each
    file decides alone, so adding or removing files never moves another one between train and val."""
    digest = hashlib.sha256(f"{int(seed)}:{relative_path.replace(os.sep, '/')}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_files(files: list[str], image_root: str, fraction: float, seed: int) -> set[str]:
    """The files of the validation part (at least one, and at least one left to train on)."""
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"dataset.val_fraction={fraction!r}: expected a fraction between 0 and 1 (e.g. 0.2), or "
                         f"null to read the train/ and val/ sub-folders")
    if len(files) < 2:
        raise ValueError(f"dataset.val_fraction={fraction}: {image_root!r} holds {len(files)} image; at least two "
                         f"are needed to train on one and validate on another")
    rel = {f: os.path.relpath(f, image_root) for f in files}
    val = {f for f in files if in_val_split(rel[f], fraction, seed)}
    if not val or len(val) == len(files):  # few files: one part got none; it takes the lowest (highest) hash
        key = {f: hashlib.sha256(f"{int(seed)}:{rel[f].replace(os.sep, '/')}".encode()).digest() for f in files}
        pick = min(files, key=key.get) if not val else max(files, key=key.get)
        val = {pick} if not val else val - {pick}
    return val


class FolderDataset(SegmentationDataset):
    """``FolderDataset(images, masks, classes)``: image files under ``images`` (recursively; or the one
    image file ``images`` names), each with
    ``<masks>/<same relative path, mask_suffix>``. Without ``masks`` the images are predicted only
    (``has_masks`` False). ``classes`` names the mask values 0..K-1 (required with masks); 255 means
    "ignore". ``ignore_index``: another mask value to ignore as well; when it is left unset (None), masks
    holding only 0 and 255 (binary masks saved as black and white images) are warned about, since
    their 255 would be ignored and only class 0 learnt. ``palette``: one RGB colour per class for pictures and
    colour exports (null: ``labels.readable_palette``). ``val_fraction`` with ``part`` ("train" or "val"):
    one folder without train/val sub-folders split by :func:`in_val_split` (seeded by ``split_seed``)."""

    def __init__(self, images: str, masks: str | None = None, classes=None, transform=None,
                 mask_suffix: str = ".png", ignore_index: int | None = None, palette=None,
                 val_fraction: float | None = None, part: str | None = None, split_seed: int = 0):
        single = os.path.isfile(images)  # one picture (eval.py images=photo.jpg): its folder holds it
        if single and not images.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"images={images!r} is a file but not an image ({', '.join(IMAGE_EXTENSIONS)}); "
                             f"give an image file or a folder of images")
        files = [images] if single else list_images(images) if os.path.isdir(images) else []
        if not files:
            why = "does not exist" if not os.path.isdir(images) else "holds no image files"
            raise FileNotFoundError(f"image folder {images!r} {why} ({', '.join(IMAGE_EXTENSIONS)}); "
                                    f"expected the folder layout:\n{LAYOUT}")
        images = os.path.dirname(os.path.abspath(images)) if single else images
        if val_fraction is not None and not single:
            val = split_files(files, images, val_fraction, split_seed)
            picked = [f for f in files if (f in val) == (part == "val")]
            print(f"dataset.val_fraction={val_fraction}: {len(picked)} of the {len(files)} images in {os.path.normpath(images)!r} are the "
                  f"{part} split ({len(val)} val, {len(files) - len(val)} train; chosen by a hash of each file's path "
                  f"with dataset.split_seed={split_seed}, so adding files moves none)", file=sys.stderr)
            files = picked
        if masks is not None and not classes:
            raise ValueError(f"dataset.classes is empty: list the class names of the masks in {masks!r} "
                             f"(value k is classes[k])")
        if classes is not None and len(classes) > 255:
            raise ValueError(f"dataset.classes has {len(classes)} names; 8-bit masks hold at most 255 classes")
        self.classes = tuple(classes or ())
        self._palette = check_palette(palette, self.classes) if palette is not None and self.classes else None
        self.image_root = images
        mask_files = [None] * len(files)
        if masks is not None:
            mask_files = [os.path.join(masks, os.path.splitext(os.path.relpath(p, images))[0] + mask_suffix)
                          for p in files]
            missing = [(p, m) for p, m in zip(files, mask_files) if not os.path.isfile(m)]
            if missing:
                raise missing_masks(missing, LAYOUT)
        if ignore_index is not None and not (len(self.classes) <= int(ignore_index) <= 255):
            raise ValueError(f"dataset.ignore_index={ignore_index!r}: expected a mask value in "
                             f"{len(self.classes)}..255, above the class values 0..{len(self.classes) - 1}")
        # the masks hold train ids; 255 (and ignore_index) mean "ignore"
        lut = label_table(num_classes=len(self.classes), ignored=[] if ignore_index is None else [int(ignore_index)])
        super().__init__(files, mask_files, [lut] * len(files), transform)
        self.masks_root = masks
        if masks is not None and ignore_index is None:
            warn_binary_255(mask_files, self.classes, masks)

    def prediction_name(self, path: str) -> str:
        """The image's path relative to the image folder, without extension (sub-folders kept)."""
        return os.path.splitext(os.path.relpath(path, self.image_root))[0]


def warn_binary_255(mask_files: list[str], classes, where: str) -> bool:
    """Warn when the masks (a sample of ``SAMPLED_MASKS`` spread over the split) hold only 0 and 255.

    That is how a binary mask saved as a black and white image looks, and 255 is the ignore value of
    every segmentation dataset format here: such a dataset trains on class 0 alone, with no error, and
    its foreground is never learnt. Returns whether it warned."""
    picked = mask_files[::max(1, len(mask_files) // SAMPLED_MASKS)][:SAMPLED_MASKS]
    seen = set()
    for path in picked:
        mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if mask is None or mask.dtype != np.uint8 or mask.ndim != 2:
            return False  # unreadable or of another kind: the loader names it
        seen |= set(np.unique(mask).tolist())
        if not seen <= {0, 255}:
            return False
    if seen != {0, 255}:
        return False
    warnings.warn(
        f"the masks in {where!r} hold only the values 0 and 255 ({len(picked)} read, e.g. {picked[0]}): 255 "
        f"means 'ignore', so training learns class 0 ({classes[0]!r}) alone and never "
        f"{', '.join(repr(c) for c in classes[1:]) or 'another class'}. If these are binary masks saved as "
        f"black and white images, store 1 for the foreground (e.g. mask = (mask == 255).astype(np.uint8)); "
        f"if 255 does mark pixels to ignore, say so with dataset.ignore_index=255 (this warning then stops).",
        stacklevel=3)
    return True
