"""Drawing with NumPy and PIL: colour maps, overlays, panels, text strips, colour bars, figures, PNGs.

Every renderer returns an (H, W, 3) uint8 array, which TensorBoard takes as it is
(``writer.add_image(tag, img, step, dataformats="HWC")``) and ``save_png`` writes to a file. A
figure explains itself: a title strip, and a colour bar at the right with the values of its scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.labels import colorize
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..io import atomic_write

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


def prediction_grid(samples, num_classes: int, palette=None) -> np.ndarray:
    """Rows of image | ground truth | prediction as one (H, W, 3) uint8 array, in ``palette`` ((K, 3) class
    colours; default: ``palette_for(num_classes)``)."""
    colours = num_classes if palette is None else palette
    rows = [np.concatenate([denormalize(img), colorize(mask.numpy(), colours), colorize(pred.numpy(), colours)], 1)
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

