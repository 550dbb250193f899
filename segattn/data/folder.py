"""Any folder of images, with an optional parallel folder of masks and a class list from the config."""

from __future__ import annotations

import os

from .base import SegmentationDataset, label_table
from .check import missing_masks

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


class FolderDataset(SegmentationDataset):
    """``FolderDataset(images, masks, classes)``: image files under ``images`` (recursively; or the one
    image file ``images`` names), each with
    ``<masks>/<same relative path, mask_suffix>``. Without ``masks`` the images are predicted only
    (``has_masks`` False). ``classes`` names the mask values 0..K-1 (required with masks)."""

    def __init__(self, images: str, masks: str | None = None, classes=None, transform=None,
                 mask_suffix: str = ".png"):
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
        if masks is not None and not classes:
            raise ValueError(f"dataset.classes is empty: list the class names of the masks in {masks!r} "
                             f"(value k is classes[k])")
        if classes is not None and len(classes) > 255:
            raise ValueError(f"dataset.classes has {len(classes)} names; 8-bit masks hold at most 255 classes")
        self.classes = tuple(classes or ())
        self.image_root = images
        mask_files = [None] * len(files)
        if masks is not None:
            mask_files = [os.path.join(masks, os.path.splitext(os.path.relpath(p, images))[0] + mask_suffix)
                          for p in files]
            missing = [(p, m) for p, m in zip(files, mask_files) if not os.path.isfile(m)]
            if missing:
                raise missing_masks(missing, LAYOUT)
        lut = label_table(num_classes=len(self.classes))  # the masks hold train ids
        super().__init__(files, mask_files, [lut] * len(files), transform)
        self.masks_root = masks

    def prediction_name(self, path: str) -> str:
        """The image's path relative to the image folder, without extension (sub-folders kept)."""
        return os.path.splitext(os.path.relpath(path, self.image_root))[0]
