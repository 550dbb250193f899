"""Pictures of what the attention modules attend to, drawn with NumPy and PIL.

Every renderer returns an (H, W, 3) uint8 array, which TensorBoard takes as it is
(``writer.add_image(tag, img, step, dataformats="HWC")``) and ``save_png`` writes to a file.

- ``attention_pictures(model, image, points)``: one forward on one image while the modules
  record (``segattn.models.attention.record``), then a picture per attention module: for
  query-dependent mechanisms (non-local, CC, DANet, OC, PSA, EMA, MHSA) one panel per marked
  pixel with its attention over the image; for query-independent ones (GC, CBAM, SGE, SA) their
  one spatial map; EMA's bases as a grid of responsibility maps (``<name>/bases``); channel gates as
  a strip (``<name>/gates``) and DANet's channel map as a matrix (``<name>/channels``).
- ``gate_pictures(model, samples, num_classes)``: channel gates averaged per class over several
  images, as a class x channel heat map (the SE and ECA papers' per-class excitation figures).
- ``log_attention_pictures(writer, model, image, points, step)`` (validation during training) and
  ``write_attention_pictures(model, dataset, out_dir, points)`` (eval.py): the above in one call.
- ``prediction_grid(samples, num_classes)`` (image | ground truth | prediction rows) and
  ``confusion_image(confusion, class_names=...)`` (the row-normalised confusion matrix, class names
  on its axes): validation's pictures in TensorBoard (``segattn.engine.logging.log_validation``).

The pictures explain themselves (``figure``): a title strip names the module (and, per panel, the
marked point (y, x)), and a colour bar at the right gives the values of the scale used. Channel
maps (EM bases, DANet's channel matrix, gates) are scaled to their own range (``robust_range``),
not to [0, 1], where they would be almost black. docs/pictures.md says how to read each kind.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .data.labels import colorize, palette_for
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .io import atomic_write
from .models.attention.record import (
    Recorder,
    attention_for,
    attention_modules,
    clear_records,
    gates,
    grid_point,
    has_gates,
    has_spatial,
    is_query_dependent,
    module_size,
    record_attention,
    responsibilities,
)

# Anchors of matplotlib's "inferno" (dark = little attention, bright yellow = most), interpolated
# linearly: perceptually ordered and readable in grey, without depending on matplotlib.
_INFERNO = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=np.float32,
)

# viridis at five stops: dark (0) to yellow (1), readable in print and for colour-blind readers.
VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64)
NAN_GREY = (96, 96, 96)


def colormap(values: np.ndarray, anchors: np.ndarray = _INFERNO) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN is grey) -> uint8 colours of shape ``values.shape + (3,)``, linear
    between the ``anchors`` (inferno by default; the confusion matrix uses ``VIRIDIS``)."""
    v = np.asarray(values, dtype=np.float64 if anchors.dtype == np.float64 else np.float32)
    nan = np.isnan(v)
    t = np.clip(np.nan_to_num(v), 0.0, 1.0) * (len(anchors) - 1)
    lo = np.floor(t).astype(np.int64).clip(0, len(anchors) - 2)
    frac = (t - lo)[..., None]
    rgb = anchors[lo] * (1.0 - frac) + anchors[lo + 1] * frac
    rgb[nan] = NAN_GREY
    return rgb.round().astype(np.uint8)


def to_numpy(t) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """An ImageNet-normalised (3, H, W) tensor, as the datasets return it -> (H, W, 3) uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image.detach().float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def prediction_grid(samples, num_classes: int) -> np.ndarray:
    """Rows of image | ground truth | prediction (Cityscapes palette) as one (H, W, 3) uint8 array."""
    rows = [np.concatenate([denormalize(img), colorize(mask.numpy(), num_classes), colorize(pred.numpy(), num_classes)], 1)
            for img, mask, pred in samples]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, 0)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) float map to ``size`` = (H, W)."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape == tuple(size):
        return values
    return np.asarray(Image.fromarray(values).resize((size[1], size[0]), Image.BILINEAR))


def _unit(values: np.ndarray) -> np.ndarray:
    """Scale a non-negative map so that its maximum is 1 (attention sums to one, so its values are
    small; the picture shows where it goes, the relative weights)."""
    top = float(np.nanmax(values)) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def overlay(image: np.ndarray, attention, alpha: float = 0.65, gamma: float = 0.5) -> np.ndarray:
    """The attention map (any (h, w)) over a grey copy of ``image`` (H, W, 3), coloured by
    (a / max a) ** gamma: attention is heavy-tailed, and gamma < 1 keeps the weaker but wide
    spread (CC's second pass, the tails of a non-local row) visible next to the peak."""
    h, w = image.shape[:2]
    heat = colormap(_unit(resize_map(to_numpy(attention), (h, w))).clip(0, None) ** gamma)
    grey = image.astype(np.float32).mean(axis=2, keepdims=True)
    return ((1.0 - alpha) * grey + alpha * heat).round().clip(0, 255).astype(np.uint8)


def draw_marker(image: np.ndarray, y: int, x: int, color=(0, 255, 255)) -> np.ndarray:
    """A ring with a cross at pixel (y, x), outlined in black so it reads on any colour."""
    h, w = image.shape[:2]
    r = max(3, min(h, w) // 24)
    pil = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(pil)
    for width, fill in ((3, (0, 0, 0)), (1, tuple(color))):
        draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=width)
        draw.line((x - 2 * r, y, x - r, y), fill=fill, width=width)
        draw.line((x + r, y, x + 2 * r, y), fill=fill, width=width)
        draw.line((x, y - 2 * r, x, y - r), fill=fill, width=width)
        draw.line((x, y + r, x, y + 2 * r), fill=fill, width=width)
    return np.asarray(pil)


def hstack(panels: Sequence[np.ndarray], gap: int = 4, fill: int = 255) -> np.ndarray:
    """Panels side by side (top-aligned), ``gap`` pixels of ``fill`` between them."""
    height = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if i:
            out.append(np.full((height, gap, 3), fill, np.uint8))
        out.append(np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=fill))
    return np.concatenate(out, axis=1)


def vstack(panels: Sequence[np.ndarray], gap: int = 4, fill: int = 255) -> np.ndarray:
    """Panels one below the other (left-aligned)."""
    return hstack([np.ascontiguousarray(p.transpose(1, 0, 2)) for p in panels], gap, fill).transpose(1, 0, 2).copy()


def point_panels(image: np.ndarray, maps: Sequence, points: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """One (H, W, 3) panel per marked pixel: ``maps[i]`` over ``image``, a marker at ``points[i]``."""
    if len(maps) != len(points):
        raise ValueError(f"point_panels: {len(maps)} maps for {len(points)} points")
    return [draw_marker(overlay(image, a), int(y), int(x)) for a, (y, x) in zip(maps, points)]


def render_points(image: np.ndarray, maps: Sequence, points: Sequence[Sequence[int]], gap: int = 4) -> np.ndarray:
    """``point_panels`` in one row: (H, P * W + (P - 1) * gap, 3)."""
    return hstack(point_panels(image, maps, points), gap)


def bases_grid(maps, cols: int = 8, cell_height: int = 48, gap: int = 2, per_map: bool = True,
               vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """EMA's (K, h, w) responsibility maps as a grid of ``cols`` columns, each cell resized to
    ``cell_height`` rows. With ``vmin`` and ``vmax`` every map is on that one scale (what
    ``attention_pictures`` does, with the maps' own range: early in training the responsibilities
    are soft, ~1/K, and would all look black on the absolute [0, 1] scale); otherwise ``per_map``
    scales each map to its own maximum."""
    maps = to_numpy(maps)
    k, h, w = maps.shape
    cell = (cell_height, max(1, round(cell_height * w / h)))
    if vmin is not None and vmax is not None:
        cells = [colormap((m - vmin) / max(vmax - vmin, 1e-12)) for m in maps]
    else:
        cells = [colormap(_unit(m) if per_map else m) for m in maps]
    cells = [np.asarray(Image.fromarray(c).resize((cell[1], cell[0]), Image.NEAREST)) for c in cells]
    cols = max(1, min(cols, k))
    blank = np.full((*cell, 3), 255, np.uint8)
    cells += [blank] * (-k % cols)
    return vstack([hstack(cells[r:r + cols], gap) for r in range(0, len(cells), cols)], gap)


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def gate_heatmap(matrix, row_labels: Sequence[str] | None = None, cell: tuple[int, int] = (12, 4),
                 vmin: float = 0.0, vmax: float = 1.0, legend: bool = False) -> np.ndarray:
    """An (R, C) matrix (rows: classes or images; columns: channels) as coloured cells of ``cell``
    = (height, width) pixels on the scale [vmin, vmax] (gates live in (0, 1)), NaN rows grey,
    with the row labels on the left when given and, with ``legend``, a colour ramp from vmin to
    vmax below."""
    m = to_numpy(matrix)
    if m.ndim == 1:
        m = m[None]
    if row_labels and len(row_labels) != m.shape[0]:
        raise ValueError(f"gate_heatmap: {len(row_labels)} labels for {m.shape[0]} rows")
    scaled = (m - vmin) / max(vmax - vmin, 1e-12)
    img = np.repeat(np.repeat(colormap(scaled), cell[0], axis=0), cell[1], axis=1)
    font = _font(max(8, min(cell[0], 14) - 2))
    margin = max(int(font.getlength(str(t))) for t in row_labels) + 6 if row_labels else 0
    band = 14 if legend else 0
    canvas = Image.new("RGB", (margin + img.shape[1], img.shape[0] + band), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(row_labels or ()):
        draw.text((2, i * cell[0]), str(text), fill=(0, 0, 0), font=font)
    if legend:
        ramp = colormap(np.linspace(0.0, 1.0, img.shape[1])[None].repeat(4, axis=0))
        canvas.paste(Image.fromarray(ramp), (margin, img.shape[0] + 1))
        small = _font(9)
        draw.text((margin, img.shape[0] + 4), f"{vmin:.3g}", fill=(0, 0, 0), font=small)
        hi = f"{vmax:.3g}"
        draw.text((canvas.width - int(small.getlength(hi)) - 2, img.shape[0] + 4), hi, fill=(0, 0, 0), font=small)
    return np.asarray(canvas)


def caption(image: np.ndarray, text: str, height: int = 18) -> np.ndarray:
    """``image`` with a white band of ``height`` pixels on top holding ``text``."""
    band = Image.new("RGB", (image.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(band).text((3, 2), text, fill=(0, 0, 0), font=_font(max(8, height - 6)))
    return np.concatenate([np.asarray(band), image], axis=0)


# --- titles and colour bars ---------------------------------------------------------------------
# Every picture that leaves this module (attention_pictures, gate_pictures, confusion_image) is a
# body with a title strip above it (``titled``) and a vertical colour bar at its right
# (``with_colorbar``), labelled with the values its ends and middle stand for.

TITLE_SIZE = 12  # font size of the title strip (PIL's default font)
LABEL_SIZE = 11  # panel labels, colour bar values, class names
COLORBAR_WIDTH = 72  # the colour bar's column: BAR_GAP white, BAR_WIDTH of colours, then the values
BAR_GAP, BAR_WIDTH = 6, 10


def _wrap(text: str, width: int, font) -> list[str]:
    """``text`` broken into lines at spaces so that each fits ``width`` pixels (a word longer than
    the width is cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while len(word) > 1 and font.getlength(word) > width:
            cut = max((i for i in range(1, len(word)) if font.getlength(word[:i]) <= width), default=1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


def text_strip(text: str, width: int, size: int = TITLE_SIZE, lines: int | None = None) -> np.ndarray:
    """A white (h, ``width``, 3) strip with ``text`` in black, wrapped to the width; ``lines`` fixes
    the number of lines (so that strips side by side are equally tall)."""
    font = _font(size)
    wrapped = _wrap(text, max(1, width - 6), font)
    n = max(len(wrapped), lines or 0)
    strip = Image.new("RGB", (width, n * (size + 3) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(wrapped):
        draw.text((3, 2 + i * (size + 3)), line, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def titled(image: np.ndarray, title: str, size: int = TITLE_SIZE) -> np.ndarray:
    """``image`` below a strip holding ``title`` (wrapped to the image's width)."""
    return np.concatenate([text_strip(title, image.shape[1], size), image], axis=0)


def _fmt(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def colorbar(height: int, labels: Sequence[tuple[float, str]], anchors: np.ndarray = _INFERNO,
             gamma: float = 1.0) -> np.ndarray:
    """A vertical colour bar, (max(height, room for the labels), COLORBAR_WIDTH, 3): the colormap
    from its value 1 at the top to 0 at the bottom, coloured as the pictures colour a value t of
    the scale (``t ** gamma``), and ``labels`` = (t, text) written beside it at t."""
    font = _font(LABEL_SIZE)
    line = LABEL_SIZE + 2
    height = max(int(height), len(labels) * line + 2)
    t = np.linspace(1.0, 0.0, height)[:, None].repeat(BAR_WIDTH, axis=1)
    canvas = Image.new("RGB", (COLORBAR_WIDTH, height), (255, 255, 255))
    canvas.paste(Image.fromarray(colormap(t ** gamma, anchors)), (BAR_GAP, 0))
    draw = ImageDraw.Draw(canvas)
    x = BAR_GAP + BAR_WIDTH + 3
    for pos, text in labels:
        y = round((1.0 - pos) * (height - 1) - line / 2)
        y = min(max(0, y), height - line)
        draw.line((BAR_GAP + BAR_WIDTH, round((1.0 - pos) * (height - 1)), x - 1, round((1.0 - pos) * (height - 1))),
                  fill=(0, 0, 0))
        while len(text) > 1 and font.getlength(text) > COLORBAR_WIDTH - x:
            text = text[:-1]
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def value_labels(lo: float, hi: float, prefix: str = "") -> list[tuple[float, str]]:
    """Colour bar labels for a linear scale from ``lo`` (bottom) to ``hi`` (top), and its middle."""
    return [(1.0, prefix + _fmt(hi)), (0.5, _fmt((lo + hi) / 2)), (0.0, prefix + _fmt(lo))]


def with_colorbar(body: np.ndarray, labels: Sequence[tuple[float, str]], anchors: np.ndarray = _INFERNO,
                  gamma: float = 1.0, top: int = 0) -> np.ndarray:
    """``body`` with a colour bar at its right, running along its rows from ``top`` down (below
    the panels' labels, beside the colours it explains); a body too short for the bar's labels is
    padded with white below."""
    bar = colorbar(body.shape[0] - top, labels, anchors, gamma)
    bar = np.concatenate([np.full((top, COLORBAR_WIDTH, 3), 255, np.uint8), bar], axis=0)
    if bar.shape[0] > body.shape[0]:
        body = np.pad(body, ((0, bar.shape[0] - body.shape[0]), (0, 0), (0, 0)), constant_values=255)
    return np.concatenate([body, bar], axis=1)


def figure(body: np.ndarray, title: str, labels: Sequence[tuple[float, str]], anchors: np.ndarray = _INFERNO,
           gamma: float = 1.0, top: int = 0) -> np.ndarray:
    """The layout of every picture: title strip, then ``body`` with its colour bar at the right."""
    return titled(with_colorbar(body, labels, anchors, gamma, top), title)


def robust_range(values, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """The ``low``..``high`` percentiles of the finite ``values`` (a few outliers then do not
    leave the rest of the picture black); a flat map gets a tiny range above its value."""
    v = to_numpy(values).astype(np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [low, high]))
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    return (lo, hi) if hi > lo else (lo, lo + max(abs(lo) * 1e-6, 1e-12))


def points_figure(image: np.ndarray, maps: Sequence, points: Sequence[Sequence[int]], title: str,
                  labels: Sequence[Sequence[int]] | None = None, gap: int = 4) -> np.ndarray:
    """``render_points`` with a title, each panel's point (y, x) (``labels``: the points in the
    caller's pixels, e.g. before the image was scaled) and its largest weight above it, and the
    colour bar of the overlay's scale: 0 to each panel's own maximum, square-root (``overlay``)."""
    labels = points if labels is None else labels
    if len(labels) != len(points):
        raise ValueError(f"points_figure: {len(labels)} labels for {len(points)} points")
    panels = point_panels(image, maps, points)
    texts = [f"({int(y)}, {int(x)}) max {_fmt(float(np.nanmax(to_numpy(a))))}" for a, (y, x) in zip(maps, labels)]
    lines = max(len(_wrap(t, max(1, p.shape[1] - 6), _font(LABEL_SIZE))) for t, p in zip(texts, panels))
    heads = [text_strip(t, p.shape[1], LABEL_SIZE, lines) for t, p in zip(texts, panels)]
    body = hstack([np.concatenate([h, p], axis=0) for h, p in zip(heads, panels)], gap)
    bar = [(1.0, "max"), (0.25, "max/16"), (0.0, "0")]  # (a / max) ** 0.5 = 0.25 at a = max / 16
    return figure(body, title, bar, gamma=0.5, top=heads[0].shape[0])


def confusion_image(confusion: torch.Tensor, size: int = 512, class_names: Sequence[str] | None = None) -> np.ndarray:
    """The confusion matrix as an (H, W, 3) uint8 picture: rows are the ground truth, columns the
    prediction (the title says so), the class names along both axes (the columns' turned upright,
    long names cut with a "."), and the cells coloured (viridis) and, when they are large enough,
    written as the percentage of the row: each row is normalised by its ground-truth pixels (the
    diagonal is the class accuracy, the rest of the row where that class's pixels went), so rare
    classes are as visible as road and sky. A class without ground-truth pixels is a grey row. A
    strip of the class colours runs along the top and the left, as in the prediction grid; the
    colour bar at the right runs from 0 to 100 %.
    """
    m = confusion.double().cpu()
    k = m.shape[0]
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"confusion_image: {len(names)} class names for a {k}x{k} matrix")
    total = m.sum(1, keepdim=True)
    share = torch.where(total > 0, m / total.clamp(min=1), torch.full_like(m, float("nan"))).numpy()
    cell = max(1, size // k)
    strip = max(3, min(cell, 8))
    heat = Image.fromarray(colormap(share, VIRIDIS).repeat(cell, 0).repeat(cell, 1))
    if cell >= 16:  # the percentages, in black on the bright cells and white on the dark ones
        draw, font = ImageDraw.Draw(heat), _font(min(LABEL_SIZE, cell // 2 + 2))
        for i, j in zip(*np.nonzero(np.isfinite(share))):
            text = f"{100 * share[i, j]:.0f}"
            box = font.getbbox(text)
            xy = (j * cell + (cell - (box[2] - box[0])) / 2 - box[0],
                  i * cell + (cell - (box[3] - box[1])) / 2 - box[1])
            draw.text(xy, text, fill=(0, 0, 0) if share[i, j] > 0.55 else (255, 255, 255), font=font)
    colours = palette_for(k)[:k].repeat(cell, 0)  # (k * cell, 3)
    left = np.repeat(colours[:, None], strip, 1)
    grid = np.concatenate([np.repeat(colours[None], strip, 0), np.asarray(heat)], 0)
    grid = np.concatenate([np.concatenate([np.full((strip, strip, 3), 255, np.uint8), left], 0), grid], 1)

    font = _font(min(LABEL_SIZE, max(6, cell)))
    limit = 110  # longest name in pixels before it is cut

    def fit(name):
        if font.getlength(name) <= limit:
            return name
        while len(name) > 1 and font.getlength(name + ".") > limit:
            name = name[:-1]
        return name + "."

    short = [fit(n) for n in names]
    margin = int(max(font.getlength(n) for n in short)) + 4
    line = LABEL_SIZE + 3
    # The row names at the left of their rows, right-aligned; "ground truth" turned upright beside them.
    side = Image.new("RGB", (line + margin, grid.shape[0]), (255, 255, 255))
    draw = ImageDraw.Draw(side)
    for i, n in enumerate(short):
        y = strip + i * cell + (cell - LABEL_SIZE) / 2 - 1
        draw.text((line + margin - 2 - font.getlength(n), y), n, fill=(0, 0, 0), font=font)
    axis = _upright("ground truth", _font(LABEL_SIZE))
    if axis.height <= side.height:
        side.paste(axis, (0, strip + (k * cell - axis.height) // 2))
    # The column names above their columns, turned upright; "prediction" above them.
    above = Image.new("RGB", (grid.shape[1], line + margin), (255, 255, 255))
    draw = ImageDraw.Draw(above)
    if _font(LABEL_SIZE).getlength("prediction") <= k * cell:
        draw.text((strip + (k * cell - _font(LABEL_SIZE).getlength("prediction")) / 2, 0), "prediction",
                  fill=(0, 0, 0), font=_font(LABEL_SIZE))
    for j, n in enumerate(short):
        upright = _upright(n, font)
        above.paste(upright, (strip + j * cell + (cell - upright.width) // 2, line + margin - upright.height - 2))
    corner = np.full((line + margin, line + margin, 3), 255, np.uint8)
    body = np.concatenate([np.concatenate([corner, np.asarray(above)], 1),
                           np.concatenate([np.asarray(side), grid], 1)], 0)
    bar = [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")]
    top = line + margin + strip
    title = ("Confusion matrix: rows = ground truth, columns = prediction; "
             "% of each row's pixels (diagonal = class accuracy)")
    return figure(body, title, bar, VIRIDIS, top=top)


def _upright(text: str, font) -> Image.Image:
    """``text`` in black on white, turned to read from bottom to top."""
    box = font.getbbox(text)
    img = Image.new("RGB", (max(1, int(font.getlength(text)) + 2), max(1, box[3] + 1)), (255, 255, 255))
    ImageDraw.Draw(img).text((1, 0), text, fill=(0, 0, 0), font=font)
    return img.rotate(90, expand=True)


def save_png(image: np.ndarray, path: str, colors: int | None = None) -> str:
    """Write an (H, W, 3) uint8 array as a PNG, atomically (temporary file, then rename).
    ``colors`` (e.g. 128) stores it with a palette of that many colours: a file several times
    smaller (for documentation), exact only for pictures with that few colours."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"save_png({path!r}): expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    with atomic_write(path) as f:
        pil = Image.fromarray(image)
        if colors:
            pil = pil.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT)
        pil.save(f, format="PNG", optimize=True)
    return path


def default_points(height: int, width: int) -> list[list[int]]:
    """Three pixels spread over an image (upper left, centre, lower right), for a quick look."""
    return [[height // 4, width // 4], [height // 2, width // 2], [3 * height // 4, 3 * width // 4]]


def _cell_width(channels: int) -> int:
    """Pixels per channel so that a row of gates is about 1024 pixels wide at most."""
    return max(1, min(8, 1024 // max(1, channels)))


def _device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.zeros(())).device


def _fit(image: torch.Tensor, max_size: int | None) -> tuple[torch.Tensor, float]:
    """``image`` scaled down (bilinear) so that its longer side is at most ``max_size``; the scale."""
    h, w = image.shape[-2:]
    scale = min(1.0, max_size / max(h, w)) if max_size else 1.0
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return image, scale


def _recorded_forward(model: torch.nn.Module, image: torch.Tensor) -> None:
    """One eval-mode forward under ``record_attention``; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), record_attention(model):
            model(image[None].to(_device(model)))
    finally:
        model.train(was_training)


def attention_pictures(model: torch.nn.Module, image: torch.Tensor, points: Sequence[Sequence[int]] | None = None,
                       max_size: int | None = 1024, name: str | None = None,
                       draw_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Pictures of every attention module of ``model`` for one normalised (3, H, W) ``image``:
    {module name: (h, w, 3) uint8}, see the module docstring for what each one shows.

    ``points`` are (y, x) pixels of ``image`` (default: ``default_points``); those outside it are skipped
    with a warning naming the image (``name``, its file). ``max_size`` caps the
    longer side the image is run at (it is scaled down, points with it): recording keeps no (HW x HW)
    map (the matrix-product modules record queries and keys and compute the rows of ``points``), but a
    module run with ``impl=explicit`` still builds one in its forward (4 GiB at 128x256 features).
    The model is run in eval mode and left in the mode it came in; what it recorded is dropped.
    ``draw_scale`` resizes the image panels (not the text) after the forward, e.g. 0.5 for
    documentation. Each picture has a title naming the module (and, per panel, the point (y, x) in
    ``image``'s pixels) and a colour bar at its right with the values of the scale used.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"attention_pictures: expected one (3, H, W) image, got shape {tuple(image.shape)}")
    if not any(isinstance(m, Recorder) for m in model.modules()):
        return {}  # e.g. the FCN baseline: nothing to picture, no forward spent
    h0, w0 = image.shape[-2:]
    points = [list(p) for p in (points if points is not None else default_points(h0, w0))]
    bad = [p for p in points if len(p) != 2]
    if bad:
        raise ValueError(f"visualize.points: {bad[0]} is not a (y, x) pixel; expected [[y, x], ...]")
    outside = [p for p in points if not (0 <= p[0] < h0 and 0 <= p[1] < w0)]
    if outside:  # images of a split differ in size: skip the point for this one image, keep the others
        warnings.warn(f"visualize.points: {outside} lie outside {name or 'the image'} ({h0}x{w0}); "
                      f"skipped for it")
        points = [p for p in points if p not in outside]
        if not points:
            return {}
    image, scale = _fit(image, max_size)
    h, w = image.shape[-2:]
    labels = [[int(y), int(x)] for y, x in points]  # the panels name the caller's pixels
    points = [[min(h - 1, int(y * scale)), min(w - 1, int(x * scale))] for y, x in points]
    rgb = denormalize(image)
    if draw_scale != 1.0:  # smaller (or larger) panels; the text stays its size
        size = (max(1, round(h * draw_scale)), max(1, round(w * draw_scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.LANCZOS))
        drawn = [[min(size[0] - 1, int(y * draw_scale)), min(size[1] - 1, int(x * draw_scale))] for y, x in points]
    else:
        drawn = points

    pictures = {}
    try:
        _recorded_forward(model, image)
        for name, m in attention_modules(model):
            name = name or type(m).__name__
            if has_spatial(m):
                if is_query_dependent(m):
                    grid = module_size(m)
                    maps = [attention_for(m, *grid_point(y, x, (h, w), grid)) for y, x in points]
                    pictures[name] = points_figure(
                        rgb, maps, drawn, f"{name}: where the marked pixel (y, x) looks; each panel from 0 "
                        f"to its own max weight, square-root scale", labels)
                else:
                    a = to_numpy(attention_for(m, 0, 0))
                    top = float(np.nanmax(a)) if a.size else 0.0
                    pictures[name] = figure(
                        overlay(rgb, a), f"{name}: spatial attention, the same for every pixel; square-root scale",
                        [(1.0, _fmt(top)), (0.25, _fmt(top / 16)), (0.0, "0")], gamma=0.5)
            if hasattr(m, "responsibilities"):
                r = to_numpy(responsibilities(m))
                lo, hi = robust_range(r)
                pictures[f"{name}/bases"] = figure(
                    bases_grid(r, vmin=lo, vmax=hi),
                    f"{name}/bases: responsibility of each of the {len(r)} EM bases (cells, row by row) "
                    f"for each position; all on one scale, {_fmt(lo)}..{_fmt(hi)} (1st..99th percentile)",
                    value_labels(lo, hi))
            if hasattr(m, "channel_matrix"):
                # A softmax over C channels: most weights are tiny and a few near 1, over many orders
                # of magnitude (or 0, underflowed), so the colours follow log10 of the weights: the
                # 1st..99th percentile of the positive ones, 8 decades at most; below it is black.
                matrix = to_numpy(m.channel_matrix()).astype(np.float64)
                side = max(1, 512 // len(matrix))
                with np.errstate(divide="ignore"):
                    logs = np.log10(matrix)
                lo, hi = robust_range(logs[matrix > 0])
                lo = max(lo, hi - 8.0)
                pictures[f"{name}/channels"] = figure(
                    gate_heatmap(logs, cell=(side, side), vmin=lo, vmax=hi),
                    f"{name}/channels: channel attention ({len(matrix)} x {len(matrix)}): row = output channel, "
                    f"column = the channel it takes from (rows sum to 1); log scale, 1st..99th percentile of the "
                    f"weights > 0 (black: below it, or 0)",
                    [(1.0, _fmt(10 ** hi)), (0.5, _fmt(10 ** ((lo + hi) / 2))), (0.0, _fmt(10 ** lo))])
            if has_gates(m):
                g = to_numpy(gates(m)[:1])
                lo, hi = robust_range(g, 0.0, 100.0)
                pictures[f"{name}/gates"] = figure(
                    gate_heatmap(g, cell=(16, _cell_width(g.shape[1])), vmin=lo, vmax=hi),
                    f"{name}/gates: the gate of each of the {g.shape[1]} channels (left to right) for this image; "
                    f"scaled to its min..max", value_labels(lo, hi))
    finally:
        clear_records(model)
    return pictures


def class_mean_gates(gate_rows, masks, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Per-class mean gate, (num_classes, C): image n's gates (N, C) count for class k with the share
    of its labelled pixels that are k; a class absent from all ``masks`` (N, H, W) is a NaN row."""
    g = to_numpy(gate_rows).astype(np.float64)
    share = np.zeros((len(g), num_classes))
    for n, mask in enumerate(masks):
        mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).ravel()
        mask = mask[(mask != ignore_index) & (mask >= 0) & (mask < num_classes)]
        if mask.size:
            share[n] = np.bincount(mask, minlength=num_classes) / mask.size
    total = share.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((share.T @ g) / total[:, None]).astype(np.float32)


def gate_pictures(model: torch.nn.Module, samples: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                  class_names: Sequence[str] | None = None, max_size: int | None = 1024) -> dict[str, np.ndarray]:
    """For every module with channel gates, the class x channel heat map of its per-class mean
    gate over ``samples`` ((3, H, W) normalised image, (H, W) label) pairs:
    {"<module name>/classes": uint8 image}. Images are run at ``max_size`` at most, as in
    ``attention_pictures`` (the labels only give the class shares, at their own size)."""
    if not any(isinstance(m, Recorder) and hasattr(m, "gate_values") for m in model.modules()):
        return {}  # no gating mechanism: no forward spent
    rows: dict[str, list[np.ndarray]] = {}
    masks = []
    for image, mask in samples:
        try:
            _recorded_forward(model, _fit(image, max_size)[0])
            for name, m in attention_modules(model):
                if has_gates(m):
                    rows.setdefault(name or type(m).__name__, []).append(to_numpy(gates(m))[0])
        finally:
            clear_records(model)
        masks.append(mask)
    labels = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    pictures = {}
    for name, g in rows.items():
        means = class_mean_gates(np.stack(g), masks, num_classes)
        # Stretched to the values' own range: a gate is per image, and scenes share most classes,
        # so the class means differ by less than the (0, 1) scale could show.
        lo, hi = robust_range(means, 0.0, 100.0)
        body = gate_heatmap(means, labels, cell=(12, _cell_width(len(g[0]))), vmin=lo, vmax=hi)
        pictures[f"{name}/classes"] = figure(
            body, f"{name}: mean channel gate per class (rows) and channel (columns) over {len(g)} images; "
            f"scaled to its min..max; grey: class absent", value_labels(lo, hi))
    return pictures


def log_attention_pictures(writer, model: torch.nn.Module, image: torch.Tensor, points=None, step: int = 0,
                           max_size: int | None = 512) -> None:
    """``attention_pictures`` into TensorBoard as ``attention/<module name>`` (for validation during
    training: the same image and points every time, so the maps can be watched sharpening)."""
    for name, picture in attention_pictures(model, image, points, max_size).items():
        writer.add_image(f"attention/{name}", picture, step, dataformats="HWC")


def write_attention_pictures(model: torch.nn.Module, dataset, out_dir: str, points=None, num_images: int = 2,
                             max_size: int | None = 1024) -> list[str]:
    """PNGs of ``attention_pictures`` for the first ``num_images`` items of ``dataset`` (dicts with
    ``image``, ``path`` and, when labelled, ``mask``), named ``<image stem>_<module>.png``, and, for
    gating mechanisms, ``classes_<module>.png``: the per-class mean gates over those images.
    Returns the paths written."""
    written = []
    samples = []
    for i in range(min(int(num_images), len(dataset))):
        item = dataset[i]
        stem = os.path.splitext(os.path.basename(str(item.get("path", f"image{i}"))))[0]
        pictures = attention_pictures(model, item["image"], points, max_size, name=str(item.get("path", stem)))
        for name, picture in pictures.items():
            written.append(save_png(picture, os.path.join(out_dir, f"{stem}_{_file_name(name)}.png")))
        if item.get("mask") is not None:
            samples.append((item["image"], item["mask"]))
    classes = getattr(dataset, "classes", None)
    if samples and classes:
        for name, picture in gate_pictures(model, samples, len(classes), list(classes), max_size).items():
            written.append(save_png(picture, os.path.join(out_dir, f"classes_{_file_name(name)}.png")))
    return written


def _file_name(module_name: str) -> str:
    return module_name.replace("/", "_").replace(".", "_") or "model"
