"""Cityscapes label tables (from cityscapesscripts' labels.py) and palettes."""

from __future__ import annotations

import numpy as np

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)

# labelId -> trainId for the 19 evaluated classes; every other id (0..33, -1) is ignored (255).
CITYSCAPES_ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_TRAINID_TO_ID = {v: k for k, v in CITYSCAPES_ID_TO_TRAINID.items()}


def palette_for(num_classes: int) -> np.ndarray:
    """The Cityscapes palette for 19 classes; a deterministic one for any other count. Ignore -> black."""
    if num_classes <= len(CITYSCAPES_PALETTE):
        pal = CITYSCAPES_PALETTE[:num_classes]
    else:
        rng = np.random.default_rng(0)
        pal = np.concatenate([CITYSCAPES_PALETTE, rng.integers(0, 256, (num_classes - 19, 3), dtype=np.uint8)])
    full = np.zeros((256, 3), dtype=np.uint8)
    full[:num_classes] = pal
    return full


def colorize(mask: np.ndarray, palette) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; 255 (ignore) and ids beyond the palette are black.

    ``palette`` is a class count (the palette of ``palette_for``) or a (K, 3) array of RGB colours
    (``segattn.load(...).palette``)."""
    if np.isscalar(palette):
        table = palette_for(int(palette))
    else:
        colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
        table = np.zeros((256, 3), dtype=np.uint8)
        table[:len(colours)] = colours
    return table[np.asarray(mask, dtype=np.int64).clip(0, 255)]
