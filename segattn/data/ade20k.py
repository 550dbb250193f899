"""ADE20K (the SceneParsing benchmark, ``ADEChallengeData2016``) with reduce-zero-label."""

from __future__ import annotations

import glob
import os

import numpy as np

from .base import SegmentationDataset, label_table
from .check import missing_masks

LAYOUT = """\
  <root>/ADEChallengeData2016/images/<split>/ADE_<split>_<n>.jpg        (split: training | validation)
  <root>/ADEChallengeData2016/annotations/<split>/ADE_<split>_<n>.png
      (value 0 = other/unlabelled -> ignored, 1..150 -> classes 0..149; <root> may also be the
       ADEChallengeData2016 folder itself; without annotations/<split> the images are predicted only)"""

# The 150 classes of the benchmark, in annotation order (value k + 1 is class k).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# Short names as in the other datasets' configs; the folders keep ADE20K's own names.
SPLITS = {"train": "training", "val": "validation"}


def reduce_zero_label_table(num_classes: int) -> np.ndarray:
    """File value -> train id: 0 -> 255 (ignore), k -> k - 1 for 1..num_classes, 255 stays 255, else invalid (-1).

    mmsegmentation's ``reduce_zero_label``: ADE20K's 0 is "other" (unlabelled), not a class.
    """
    return label_table({k + 1: k for k in range(num_classes)}, ignored=[0])


# train id -> annotation value, for exports in the benchmark's own encoding.
TRAINID_TO_FILE = np.zeros(256, np.uint8)
TRAINID_TO_FILE[:len(ADE20K_CLASSES)] = np.arange(1, len(ADE20K_CLASSES) + 1)


class ADE20KDataset(SegmentationDataset):
    """``ADE20KDataset(root, split)`` over the ``ADEChallengeData2016`` layout (see ``LAYOUT``)."""

    classes = ADE20K_CLASSES
    file_ids = TRAINID_TO_FILE

    def __init__(self, root: str, split: str = "training", transform=None):
        base = root if os.path.isdir(os.path.join(root, "images")) else os.path.join(root, "ADEChallengeData2016")
        folder = SPLITS.get(split, split)
        img_dir = os.path.join(base, "images", folder)
        images = sorted(glob.glob(os.path.join(img_dir, "*.jpg")) + glob.glob(os.path.join(img_dir, "*.png")))
        if not images:
            why = "does not exist" if not os.path.isdir(root) else f"has no images in {img_dir}"
            raise FileNotFoundError(f"dataset.root={root!r} {why}; expected the ADE20K layout:\n{LAYOUT}")
        ann_dir = os.path.join(base, "annotations", folder)
        masks = []
        if os.path.isdir(ann_dir):
            masks = [os.path.join(ann_dir, os.path.splitext(os.path.basename(p))[0] + ".png") for p in images]
            missing = [(p, m) for p, m in zip(images, masks) if not os.path.isfile(m)]
            if missing:
                raise missing_masks(missing, LAYOUT)
        else:
            masks = [None] * len(images)
        lut = reduce_zero_label_table(len(self.classes))
        super().__init__(images, masks, [lut] * len(images), transform)
        self.root, self.split = root, split
