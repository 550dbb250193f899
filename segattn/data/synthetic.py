"""The embedded dataset: small, deterministic scenes written in the real Cityscapes layout.

``python -m segattn.data.synthetic [ROOT]`` writes ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png``
and ``gtFine/{train,val}/<city>/*_gtFine_{labelIds,labelTrainIds}.png`` (48 train and 12 val images of
256x512 by default), so the code path a new user runs is the one a Cityscapes user runs.

A scene is a street of bands (sky, building or vegetation, sidewalk, road) with objects of the other
classes drawn on top. Each class has its palette colour plus a texture of its own (stripes of a
class-specific orientation and period) and colour noise, so the class is learnable from local
appearance while colour alone is ambiguous for some pairs (bus/train, car/truck).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

from .labels import CITYSCAPES_PALETTE, CITYSCAPES_TRAINID_TO_ID

DEFAULT_ROOT = os.path.join("data", "mini_cityscapes")
NUM_CLASSES = 19
SPLITS = {"train": ("aachen", 48), "val": ("frankfurt", 12)}
SIZE = (256, 512)
BACKGROUND = (0, 1, 2, 8, 10)  # road, sidewalk, building, vegetation, sky
OBJECTS = tuple(c for c in range(NUM_CLASSES) if c not in BACKGROUND)

_rng_tex = np.random.default_rng(1234)
_THETA = _rng_tex.uniform(0, np.pi, NUM_CLASSES)
_PERIOD = _rng_tex.uniform(4, 14, NUM_CLASSES)


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A (h, w) uint8 trainId label map."""
    lab = np.empty((h, w), np.uint8)
    sky = int(h * rng.uniform(0.15, 0.3))
    top = int(h * rng.uniform(0.5, 0.6))
    walk = int(h * rng.uniform(0.62, 0.7))
    lab[:sky] = 10
    lab[sky:top] = 2
    # Alternate building and vegetation blocks along the street.
    x = 0
    while x < w:
        bw = int(rng.integers(w // 8, w // 3))
        if rng.random() < 0.4:
            lab[sky:top, x:x + bw] = 8
        x += bw
    lab[top:walk] = 1
    lab[walk:] = 0
    yy, xx = np.mgrid[:h, :w]
    for c in rng.permutation(np.repeat(OBJECTS, 2)):
        ch, cw = int(rng.integers(h // 12, h // 4)), int(rng.integers(w // 24, w // 6))
        if c in (5, 11, 12):  # poles and people are tall and thin
            ch, cw = ch * 2, max(3, cw // 2)
        cy, cx = int(rng.integers(sky, h)), int(rng.integers(0, w))
        if rng.random() < 0.5:
            inside = (np.abs(yy - cy) <= ch // 2) & (np.abs(xx - cx) <= cw // 2)
        else:
            inside = ((yy - cy) / (ch / 2)) ** 2 + ((xx - cx) / (cw / 2)) ** 2 <= 1
        lab[inside] = c
    return lab


def _render(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """Colour + per-class stripes + noise -> (h, w, 3) uint8 image."""
    h, w = lab.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    theta, period = _THETA[lab], _PERIOD[lab]
    stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    img = CITYSCAPES_PALETTE[lab].astype(np.float32)
    img += 30.0 * stripes[..., None]
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    img *= rng.uniform(0.8, 1.2)  # global illumination, per image
    return img.clip(0, 255).astype(np.uint8)


def generate(root: str = DEFAULT_ROOT, seed: int = 0, size: tuple[int, int] = SIZE, splits=None) -> str:
    """Write the dataset under ``root`` (atomically: a temp folder renamed at the end); returns root."""
    splits = splits or SPLITS
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".mini_cityscapes.", dir=parent)
    try:
        to_id = np.full(256, 255, np.uint8)  # trainId -> labelId (ignore stays 255 -> id 0 "unlabeled")
        for t, i in CITYSCAPES_TRAINID_TO_ID.items():
            to_id[t] = i
        to_id[255] = 0
        for split_i, (split, (city, n)) in enumerate(sorted(splits.items())):
            rng = np.random.default_rng([seed, split_i])
            img_dir = os.path.join(tmp, "leftImg8bit", split, city)
            gt_dir = os.path.join(tmp, "gtFine", split, city)
            os.makedirs(img_dir)
            os.makedirs(gt_dir)
            for k in range(n):
                lab = _scene(rng, *size)
                img = _render(rng, lab)
                stem = f"{city}_{k:06d}_000019"
                Image.fromarray(img).save(os.path.join(img_dir, f"{stem}_leftImg8bit.png"))
                Image.fromarray(lab).save(os.path.join(gt_dir, f"{stem}_gtFine_labelTrainIds.png"))
                Image.fromarray(to_id[lab]).save(os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"))
        try:
            os.replace(tmp, root)
        except OSError:
            if not os.path.isdir(root):  # another process finished first: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_roots() -> set[str]:
    """Where the embedded dataset is generated on first use: ``data/mini_cityscapes`` of the working folder
    and of the repository segattn is installed from."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {os.path.abspath(DEFAULT_ROOT), os.path.join(repo, DEFAULT_ROOT)}


def _this_python() -> str:
    """This interpreter as a command that runs from the user's shell, active venv or not (.venv/bin/python)."""
    rel = os.path.relpath(sys.executable)
    return sys.executable if rel.startswith("..") else rel


def ensure(root: str = DEFAULT_ROOT, anywhere: bool = False) -> str:
    """Generate the embedded dataset unless ``root`` already holds it. Only at a default place
    (:func:`default_roots`) unless ``anywhere``: a mistyped ``dataset.root`` is an error, not a new dataset
    of generated scenes scored as if they were the user's."""
    if not os.path.isdir(os.path.join(root, "leftImg8bit")):
        if not anywhere and os.path.abspath(root) not in default_roots():
            why = "does not exist" if not os.path.exists(root) else "holds no leftImg8bit/ folder"
            raise FileNotFoundError(
                f"dataset.root={root!r} {why}: the embedded dataset is generated on first use only at its default "
                f"place, {DEFAULT_ROOT} (leave dataset.root unset for it); to generate it at {root!r}, run "
                f"{_this_python()} -m segattn.data.synthetic {root}")
        print(f"generating the embedded dataset in {root} ...", file=sys.stderr)
        generate(root)
    return root


if __name__ == "__main__":
    ensure(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_ROOT, anywhere=True)
