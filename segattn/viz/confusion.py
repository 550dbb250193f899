"""The confusion matrix as a picture (validation's ``confusion`` image in TensorBoard)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.labels import palette_for
from .draw import LABEL_SIZE, VIRIDIS, _font, colormap, figure


def confusion_image(confusion: torch.Tensor, size: int = 512, class_names: Sequence[str] | None = None,
                    palette=None) -> np.ndarray:
    """The confusion matrix as an (H, W, 3) uint8 picture: rows are the ground truth, columns the
    prediction (the title says so), the class names along both axes (the columns' turned upright,
    long names cut with a "."), and the cells coloured (viridis) and, when they are large enough,
    written as the percentage of the row: each row is normalised by its ground-truth pixels (the
    diagonal is the class accuracy, the rest of the row where that class's pixels went), so rare
    classes are as visible as road and sky. A class without ground-truth pixels is a grey row. A
    strip of the class colours runs along the top and the left, as in the prediction grid; the
    colour bar at the right runs from 0 to 100 %. ``palette``: (K, 3) class colours (default ``palette_for``).
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
    colours = (np.asarray(palette, np.uint8).reshape(-1, 3)[:k] if palette is not None
               else palette_for(k, class_names)[:k]).repeat(cell, 0)  # (k * cell, 3)
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

