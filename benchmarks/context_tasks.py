"""The context suite's tasks: scenes whose objects' class only a head that reaches far can know.

Every image is a road, ``H x W``, read left to right: a *far zone* of ``FAR`` columns at the left edge
holds the cue, and the objects lie from column ``x0`` on, where ``x0 - FAR`` is more than the
receptive field of ResNet-18-D8 + FCN (measured by ``context.receptive_radius``, not assumed). So the
gradient of every object pixel's FCN logits with respect to every cue pixel is exactly zero (the tests
check it) and a convolutional head is at chance on the objects. All objects look alike; their class
("car" or "truck") is what the cue says. The tasks differ in what kind of reading the cue needs, which
is what separates the survey's families (Guo et al., "Attention Mechanisms in Computer Vision: A
Survey", 2022):

- ``far_marker``: a labelled marker strip over the whole far zone's left edge, red or blue. Anything
  that reaches it reads it, global pooling included (the strip moves the image's mean colour).
- ``global_cue``: the far zone holds a dozen small dots, each red or blue; the objects are "car" when
  most dots are red (9 of 12) and "truck" when most are blue. No single dot decides (a quarter of them
  say the opposite): it is a statistic over many places, and any global pooling (SE, ECA, GC, CBAM's
  channel gate, ...) reads it exactly. The dots are labelled by their colour, as the markers are, so
  the backbone keeps their colour in its features instead of learning to discard it.
- ``which_marker``: two lanes (the top and bottom halves), each with its own marker and its own
  objects; one lane's marker is red and the other's blue in every image, so the image's global
  statistics are the same whichever lane is which (a probe on globally pooled inputs is at chance,
  the tests check it). An object's class follows its own lane's marker: only attention that knows
  *where* can read it (and criss-cross's rows reach a lane's marker in one step).

Cityscapes train ids: road 0, marker red "traffic light" 6, marker blue "traffic sign" 7, car 13,
truck 14.
"""

from __future__ import annotations

import numpy as np

ROAD, CAR, TRUCK = 0, 13, 14
MARKER = {CAR: 6, TRUCK: 7}  # the marker's own label follows its colour, which keeps it in the features
NAMES = {ROAD: "road", 6: "traffic light", 7: "traffic sign", CAR: "car", TRUCK: "truck"}
OBJECTS = (NAMES[CAR], NAMES[TRUCK])
RED, BLUE = (230, 30, 30), (30, 30, 230)
COLOUR = {CAR: RED, TRUCK: BLUE}
ROAD_RGB, OBJECT_RGB = (128, 64, 128), (150, 150, 150)
FAR = 48  # the far zone's width, where every task puts its cue
MARKER_W = 24  # a marker strip's width inside the far zone
DOTS, DOTS_MAJORITY, DOT = 12, 9, 6  # global_cue: 12 dots of 6x6, 9 of the majority colour

TASKS = ("far_marker", "global_cue", "which_marker")
VERSION = 2  # part of the suite's cache key: bump it when a scene changes
DESCRIPTIONS = {
    "far_marker": "a labelled marker strip (red: car, blue: truck) at the far left edge",
    "global_cue": f"{DOTS} dots in the far zone, {DOTS_MAJORITY} of the class's colour "
                  f"(red: car, blue: truck): a statistic over many places",
    "which_marker": "two lanes, one red and one blue marker in every image; an object follows its own lane's marker",
}


def _texture(h: int, w: int, theta: float, period: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    return np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)


def _objects(rng: np.random.Generator, lab: np.ndarray, cls: int, rows: tuple[int, int], x0: int) -> None:
    """Draw one to three rectangles or ellipses of class ``cls`` into ``lab`` within ``rows``, columns >= x0."""
    h, w = lab.shape
    top, bottom = rows
    lane = bottom - top
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(1, 4))):
        oh = int(rng.integers(max(4, lane // 4), max(5, lane * 3 // 4)))
        ow = int(rng.integers(12, max(13, (w - x0) // 2)))
        cy = int(rng.integers(top + oh // 2, bottom - oh // 2))
        cx = int(rng.integers(x0 + ow // 2, w - ow // 2))
        if rng.random() < 0.5:
            inside = (np.abs(yy - cy) <= oh // 2) & (np.abs(xx - cx) <= ow // 2)
        else:
            inside = ((yy - cy) / (oh / 2)) ** 2 + ((xx - cx) / (ow / 2)) ** 2 <= 1
        lab[inside & (yy >= top) & (yy < bottom)] = cls


def _paint(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """The picture of a label map: textured road, objects all alike, noise and a brightness change."""
    h, w = lab.shape
    img = np.empty((h, w, 3), np.float32)
    img[:] = ROAD_RGB
    img += 25.0 * _texture(h, w, 0.3, 9.0)[..., None]
    objects = (lab == CAR) | (lab == TRUCK)
    # Objects of both classes are drawn alike: only the cue tells them apart.
    img[objects] = np.asarray(OBJECT_RGB, np.float32) + 40.0 * _texture(h, w, 1.2, 5.0)[objects][:, None]
    for cls, marker in MARKER.items():
        img[lab == marker] = COLOUR[cls]
    return img


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    img += rng.normal(0, 10, img.shape).astype(np.float32)
    img *= rng.uniform(0.85, 1.15)
    return img.clip(0, 255).astype(np.uint8)


def scene(task: str, rng: np.random.Generator, h: int, w: int, x0: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One (image HxWx3 uint8, trainId label HxW uint8, facts) of ``task``; objects in columns >= x0.
    ``facts["classes"]`` is the objects' class per lane (one lane but for ``which_marker``)."""
    lab = np.full((h, w), ROAD, np.uint8)
    if task == "which_marker":
        lanes = [(0, h // 2), (h // 2, h)]
        classes = [CAR, TRUCK] if rng.random() < 0.5 else [TRUCK, CAR]
    elif task in ("far_marker", "global_cue"):
        lanes = [(0, h)]
        classes = [CAR if rng.random() < 0.5 else TRUCK]
    else:
        raise ValueError(f"unknown context task {task!r}; choices: {', '.join(TASKS)}")
    for rows, cls in zip(lanes, classes):
        if task != "global_cue":
            lab[rows[0]:rows[1], :MARKER_W] = MARKER[cls]
        _objects(rng, lab, cls, rows, x0)
    if task == "global_cue":
        # Dots on a grid of DOT-sized cells inside the far zone: only their count says.
        cells = [(y, x) for y in range(0, h - DOT + 1, DOT + 2) for x in range(0, FAR - DOT + 1, DOT + 2)]
        picked = rng.choice(len(cells), size=DOTS, replace=False)
        other = TRUCK if classes[0] == CAR else CAR
        kinds = [classes[0]] * DOTS_MAJORITY + [other] * (DOTS - DOTS_MAJORITY)
        for k, i in zip(picked, rng.permutation(len(kinds))):
            y, x = cells[k]
            lab[y:y + DOT, x:x + DOT] = MARKER[kinds[i]]
    return _finish(rng, _paint(rng, lab)), lab, {"classes": classes}


def pooled_features(img: np.ndarray) -> np.ndarray:
    """What global pooling sees of an image: each channel's mean and standard deviation over all pixels."""
    x = img.astype(np.float64) / 255.0
    return np.concatenate([x.mean(axis=(0, 1)), x.std(axis=(0, 1))])


def global_probe_accuracy(task: str, h: int, w: int, x0: int, n: int = 400, seed: int = 0) -> float:
    """Held-out accuracy of a linear classifier (least squares on standardised features) that predicts the
    first lane's object class from :func:`pooled_features`: near 1 when global statistics carry the cue,
    near 0.5 (chance) when they carry nothing."""
    rng = np.random.default_rng(seed)
    feats, target = [], []
    for _ in range(n):
        img, _, facts = scene(task, rng, h, w, x0)
        feats.append(pooled_features(img))
        target.append(1.0 if facts["classes"][0] == CAR else -1.0)
    x, y = np.asarray(feats), np.asarray(target)
    half = n // 2
    mu, sd = x[:half].mean(0), x[:half].std(0) + 1e-12
    design = np.c_[(x - mu) / sd, np.ones(n)]
    coef, *_ = np.linalg.lstsq(design[:half], y[:half], rcond=None)
    return float(np.mean(np.sign(design[half:] @ coef) == y[half:]))
