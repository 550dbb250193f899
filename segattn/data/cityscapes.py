"""Cityscapes in its real layout (also the layout of the embedded dataset)."""

from __future__ import annotations

import glob
import os

import numpy as np

from .base import SegmentationDataset, label_table
from .check import missing_masks
from .labels import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_TRAINID_TO_ID

LAYOUT = """\
  <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
      (or *_gtFine_labelIds.png, converted with the official id -> trainId table;
       split test: images only, its official masks are placeholders)"""

# train id -> labelId, what the official evaluation and test server read; anything else -> 0 (unlabeled).
TRAINID_TO_LABELID = np.zeros(256, np.uint8)
TRAINID_TO_LABELID[list(CITYSCAPES_TRAINID_TO_ID)] = list(CITYSCAPES_TRAINID_TO_ID.values())


def lookup_table(mapping: dict[int, int] | None, num_classes: int) -> np.ndarray:
    """File value -> train id for Cityscapes masks: ``labelTrainIds`` (``mapping`` None) or ``labelIds``
    (``mapping`` labelId -> trainId). labelIds go up to 33 (and -1, the license plate, stored as 255);
    those without a train id are ignored."""
    return label_table(mapping, num_classes, ignored=range(34) if mapping is not None else ())


class CityscapesDataset(SegmentationDataset):
    """``CityscapesDataset(root, split)`` over the official layout (see ``LAYOUT``).

    The ``test`` split is read as images only: its official masks are placeholders, and its
    predictions go to the evaluation server as labelIds (``label_ids``, ``prediction_name``).
    """

    classes = CITYSCAPES_CLASSES
    file_ids = TRAINID_TO_LABELID

    def __init__(self, root: str, split: str = "train", transform=None):
        img_dir = os.path.join(root, "leftImg8bit", split)
        images = sorted(glob.glob(os.path.join(img_dir, "*", "*_leftImg8bit.png")))
        if not images:
            why = "does not exist" if not os.path.isdir(root) else f"has no images for split {split!r}"
            raise FileNotFoundError(f"dataset.root={root!r} {why}; expected the Cityscapes layout:\n{LAYOUT}")
        masks, luts, missing = [], [], []
        train_lut = lookup_table(None, len(self.classes))
        id_lut = lookup_table(CITYSCAPES_ID_TO_TRAINID, len(self.classes))
        for path in images:
            if split == "test":
                masks.append(None)
                luts.append(train_lut)
                continue
            stem = os.path.basename(path)[: -len("_leftImg8bit.png")]
            gt = os.path.join(root, "gtFine", split, os.path.basename(os.path.dirname(path)), stem + "_gtFine_")
            if os.path.isfile(gt + "labelTrainIds.png"):
                masks.append(gt + "labelTrainIds.png")
                luts.append(train_lut)
            elif os.path.isfile(gt + "labelIds.png"):
                masks.append(gt + "labelIds.png")
                luts.append(id_lut)
            else:
                missing.append((path, f"{gt}labelTrainIds.png or {gt}labelIds.png"))
        if missing:  # all of them at once: fixing one per start would take as many starts
            raise missing_masks(missing, LAYOUT)
        super().__init__(images, masks, luts, transform)
        self.root, self.split = root, split

    def prediction_name(self, path: str) -> str:
        """``<city>_<seq>_<frame>``: the official scripts find a prediction by this prefix."""
        return os.path.basename(path)[: -len("_leftImg8bit.png")]
