"""Attention pictures: what each attention module of a model attends to, for one image (and the
channel gates per class over several), from what the modules record (``segattn.models.attention.record``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..models.attention.record import (
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
from .draw import (
    _fmt,
    bases_grid,
    denormalize,
    figure,
    gate_heatmap,
    overlay,
    points_figure,
    robust_range,
    save_png,
    to_numpy,
    value_labels,
)


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
            pictures.update(_module_pictures(name or type(m).__name__, m, (h, w), rgb, points, drawn, labels))
    finally:
        clear_records(model)
    return pictures


def _module_pictures(name: str, m: torch.nn.Module, size: tuple[int, int], rgb: np.ndarray, points, drawn,
                     labels) -> dict[str, np.ndarray]:
    """The pictures of one recorded module (see ``attention_pictures``): ``points`` on the image run at
    ``size``, ``drawn`` the same on ``rgb`` (the image as drawn), ``labels`` the caller's pixels."""
    pictures = {}
    if has_spatial(m):
        if is_query_dependent(m):
            grid = module_size(m)
            maps = [attention_for(m, *grid_point(y, x, size, grid)) for y, x in points]
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
