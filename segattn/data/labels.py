"""Cityscapes label tables (from cityscapesscripts' labels.py) and palettes."""

from __future__ import annotations

import colorsys

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


# Tableau 10 (matplotlib's tab10): ten hues told apart at a glance, none of them black (ignore is black).
TABLEAU10 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
             (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def readable_palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours for any class count: Tableau 10 first, then hues a golden-ratio step apart
    (each new hue far from the previous ones) at alternating saturation and brightness; never black."""
    colours = [tuple(c) for c in TABLEAU10[:num_classes]]
    for i in range(len(colours), num_classes):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.9, 0.95) if i % 2 else (0.55, 0.8)
        colours.append(tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, sat, val)))
    return np.array(colours, dtype=np.uint8).reshape(-1, 3)


def palette_for(num_classes: int, classes=None) -> np.ndarray:
    """The 256-entry colour table of a dataset (rows past the classes, 255 = ignore among them, black):
    Cityscapes' own colours for its 19 classes (``classes`` None and 19 classes, or Cityscapes' names),
    :func:`readable_palette` for any other class list."""
    cityscapes = tuple(classes) == CITYSCAPES_CLASSES if classes is not None else num_classes == 19
    pal = CITYSCAPES_PALETTE if cityscapes else readable_palette(num_classes)
    full = np.zeros((256, 3), dtype=np.uint8)
    full[:num_classes] = pal[:num_classes]
    return full


def check_palette(palette, classes, key: str = "dataset.palette") -> np.ndarray:
    """``dataset.palette`` (one [R, G, B] per class, 0-255) as a (K, 3) uint8 array; null: the default."""
    k = len(classes)
    if palette is None:
        return palette_for(k, classes)[:k]
    try:
        arr = np.asarray(palette, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (k, 3) or not np.isfinite(arr).all() or (arr < 0).any() or (arr > 255).any() \
            or (arr != np.round(arr)).any():
        raise ValueError(f"{key}={palette!r}: expected one [R, G, B] colour (whole numbers 0-255) per class, "
                         f"{k} for {list(classes)[:6]}{'...' if k > 6 else ''}, e.g. "
                         f"{key}=[{','.join(str(list(map(int, c))).replace(' ', '') for c in readable_palette(min(k, 3)))}"
                         f"{',...' if k > 3 else ''}]")
    return arr.astype(np.uint8)


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
