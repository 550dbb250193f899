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
  ``confusion_image(confusion)`` (the row-normalised confusion matrix): validation's pictures in
  TensorBoard (``segattn.engine.logging.log_validation``).
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


def confusion_image(confusion: torch.Tensor, size: int = 512) -> np.ndarray:
    """The confusion matrix (rows ground truth, columns prediction) as an (H, W, 3) uint8 heat map.

    Each row is normalised by its ground-truth pixels (the diagonal is the class accuracy, the rest
    of the row where that class's pixels went), so rare classes are as visible as road and sky.
    A strip of the class colours runs along the top and the left, as in the prediction grid.
    """
    m = confusion.double().cpu()
    k = m.shape[0]
    heat = colormap((m / m.sum(1, keepdim=True).clamp(min=1)).numpy(), VIRIDIS)
    cell = max(1, size // k)
    heat = heat.repeat(cell, 0).repeat(cell, 1)
    colours = palette_for(k)[:k].repeat(cell, 0)  # (k * cell, 3)
    left = np.repeat(colours[:, None], cell, 1)
    top = np.concatenate([np.zeros((cell, cell, 3), np.uint8), np.repeat(colours[None], cell, 0)], 1)
    return np.concatenate([top, np.concatenate([left, heat], 1)], 0)


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


def bases_grid(maps, cols: int = 8, cell_height: int = 48, gap: int = 2, per_map: bool = True) -> np.ndarray:
    """EMA's (K, h, w) responsibility maps as a grid of ``cols`` columns, each cell resized to
    ``cell_height`` rows. ``per_map`` scales each map to its own maximum (early in training the
    responsibilities are soft, ~1/K, and would all look black on the absolute [0, 1] scale)."""
    maps = to_numpy(maps)
    k, h, w = maps.shape
    cell = (cell_height, max(1, round(cell_height * w / h)))
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
                       max_size: int | None = 1024, name: str | None = None) -> dict[str, np.ndarray]:
    """Pictures of every attention module of ``model`` for one normalised (3, H, W) ``image``:
    {module name: (h, w, 3) uint8}, see the module docstring for what each one shows.

    ``points`` are (y, x) pixels of ``image`` (default: ``default_points``); those outside it are skipped
    with a warning naming the image (``name``, its file). ``max_size`` caps the
    longer side the image is run at (it is scaled down, points with it): recording keeps no (HW x HW)
    map (the matrix-product modules record queries and keys and compute the rows of ``points``), but a
    module run with ``impl=explicit`` still builds one in its forward (4 GiB at 128x256 features).
    The model is run in eval mode and left in the mode it came in; what it recorded is dropped.
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
    points = [[min(h - 1, int(y * scale)), min(w - 1, int(x * scale))] for y, x in points]
    rgb = denormalize(image)

    pictures = {}
    try:
        _recorded_forward(model, image)
        for name, m in attention_modules(model):
            name = name or type(m).__name__
            if has_spatial(m):
                if is_query_dependent(m):
                    grid = module_size(m)
                    maps = [attention_for(m, *grid_point(y, x, (h, w), grid)) for y, x in points]
                    pictures[name] = render_points(rgb, maps, points)
                else:
                    pictures[name] = overlay(rgb, attention_for(m, 0, 0))
            if hasattr(m, "responsibilities"):
                pictures[f"{name}/bases"] = bases_grid(responsibilities(m))
            if hasattr(m, "channel_matrix"):
                matrix = to_numpy(m.channel_matrix())
                side = max(1, 512 // len(matrix))
                pictures[f"{name}/channels"] = gate_heatmap(_unit(matrix) ** 0.5, cell=(side, side))
            if has_gates(m):
                g = gates(m)[:1]
                pictures[f"{name}/gates"] = gate_heatmap(g, cell=(16, _cell_width(g.shape[1])))
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
        finite = means[np.isfinite(means)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        pictures[f"{name}/classes"] = gate_heatmap(means, labels, cell=(12, _cell_width(len(g[0]))),
                                                   vmin=lo, vmax=hi if hi > lo else lo + 1e-6, legend=True)
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
