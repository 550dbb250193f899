"""Test-time inference as the benchmarks run it: whole image, sliding window, multi-scale + flip.

``infer(model, images, ...)`` returns class scores at the input's resolution:

- one pass (``scales`` of one entry, no ``flip``): the logits, from the whole image (``whole``) or
  from overlapping ``crop_size`` windows ``stride`` apart whose logits are averaged (``slide``,
  mmsegmentation's ``slide_inference``);
- several passes (more than one scale, or ``flip``): softmax probabilities averaged over the passes
  (mmsegmentation's test-time augmentation). Probabilities, not logits, because logits of different
  scales are not on a common footing; each pass is one vote of total weight 1 per pixel.

Memory stays bounded on large images: each pass is brought to the output resolution and added to one
accumulator before the next pass starts, so there are never the logits of all scales at once.

``base_scale`` ``[long, short]`` first resizes the image, keeping its aspect ratio, to fit within
``long`` x ``short`` (mmsegmentation's test ``Resize(scale=(2048, 512), keep_ratio=True)`` for
ADE20K); ``scales`` multiply that size. The scores always come back at the input's resolution.

Batching, without changing a number (every layer works per image in eval mode): ``window_batch``
slide windows go through the model in one batch (default 4), and ``batch_size`` images of one size
are predicted together by validation and eval.py (default 1; the dataset configs set it: the embedded
dataset 4, Cityscapes 2) and by ``segattn.load(...).predict(list)`` (default 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import positive_int, size_hw

MODES = ("whole", "slide")
KEYS = ("mode", "crop_size", "stride", "scales", "flip", "base_scale", "window_batch", "batch_size")
WINDOW_BATCH = 4


def default_window(node: dict, train_crop=None) -> dict:
    """``node`` with a slide window where it names none: the training crop, windows 2/3 of it apart
    (mmseg's 769/513 ratio). What eval.py and ``segattn.load(...).predict`` both do."""
    node = dict(node)
    if node.get("mode") == "slide" and node.get("crop_size") is None and train_crop:
        node["crop_size"] = [int(c) for c in train_crop]
    if node.get("mode") == "slide" and node.get("stride") is None and node.get("crop_size"):
        node["stride"] = [max(1, (2 * int(c) + 2) // 3) for c in node["crop_size"]]
    return node


def inference_kwargs(node: dict | None) -> dict:
    """The ``inference`` config node as keyword arguments of ``infer`` / ``Segmentor.predict``
    (all but ``batch_size``, which the caller batches by: see :func:`image_batch`)."""
    node = dict(node or {})
    unknown = sorted(set(node) - set(KEYS))
    if unknown:
        raise ValueError(f"inference.{unknown[0]} is not a known key; known: {', '.join(KEYS)}")
    if node.get("window_batch") is not None:
        positive_int(node["window_batch"], "inference.window_batch", hint=" (windows per forward pass)")
    image_batch(node)  # checks inference.batch_size
    node.pop("batch_size", None)
    if node.get("mode") is not None and node["mode"] not in MODES:
        raise ValueError(f"inference.mode={node['mode']!r}; expected one of {', '.join(MODES)}")
    if node.get("mode") == "slide":  # checked here, before a model is built or an image read
        missing = [k for k in ("crop_size", "stride") if node.get(k) is None]
        if missing:
            raise ValueError(f"inference.mode=slide needs inference.{' and inference.'.join(missing)} ([H, W] "
                             f"each, e.g. inference.crop_size=[769,769] inference.stride=[513,513] for Cityscapes)")
        crop, stride = _pair(node["crop_size"], "crop_size"), _pair(node["stride"], "stride")
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise ValueError(f"inference.stride={list(stride)} is larger than inference.crop_size={list(crop)}: "
                             f"pixels between windows would get no prediction")
    return {k: v for k, v in node.items() if v is not None}


def image_batch(node: dict | None) -> int:
    """``inference.batch_size``: how many images of one size are predicted in one batch (default 1)."""
    value = (node or {}).get("batch_size")
    return 1 if value is None else positive_int(value, "inference.batch_size", hint=" (images per forward pass)")


def _pair(value, key: str) -> tuple[int, int]:
    return size_hw(value, f"inference.{key}")


def _logits(model, images: torch.Tensor) -> torch.Tensor:
    """The model's prediction upsampled to the input's size."""
    out = model(images)["out"]
    return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)


def slide(model, images: torch.Tensor, crop_size, stride, window_batch: int = WINDOW_BATCH) -> torch.Tensor:
    """Logits averaged over overlapping windows (mmsegmentation's ``slide_inference``).

    The last window of a row or column is shifted back to end at the border rather than padded, and
    an image smaller than the crop is one window of its own size, so every window is real pixels and
    all have one size: the windows of all N images go through the model ``window_batch`` at a time
    (in all: each forward takes max(1, window_batch // N) window positions of every image).
    """
    h_crop, w_crop = _pair(crop_size, "crop_size")
    h_stride, w_stride = _pair(stride, "stride")
    if h_stride > h_crop or w_stride > w_crop:
        raise ValueError(f"inference.stride={list(stride)} is larger than inference.crop_size={list(crop_size)}: "
                         f"pixels between windows would get no prediction")
    window_batch = positive_int(window_batch, "inference.window_batch")
    n, _, h, w = images.shape
    rows = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    cols = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * h_stride + h_crop, h), min(c * w_stride + w_crop, w)
            boxes.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    logits = None
    count = images.new_zeros(1, 1, h, w)
    step = max(1, window_batch // n)
    for i in range(0, len(boxes), step):
        group = boxes[i:i + step]
        windows = _logits(model, torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group]))
        if logits is None:
            logits = images.new_zeros(n, windows.shape[1], h, w)
        for j, (y1, y2, x1, x2) in enumerate(group):
            logits[:, :, y1:y2, x1:x2] += windows[j * n:(j + 1) * n]
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


def fit_to_scale(h: int, w: int, base_scale) -> tuple[int, int]:
    """(h, w) resized keeping the aspect ratio to fit within ``[long, short]`` (mmcv's ``rescale_size``)."""
    try:
        long, short = max(base_scale), min(base_scale)
    except (TypeError, ValueError):
        raise ValueError(f"base_scale={base_scale!r}: expected [long edge, short edge]") from None
    f = min(long / max(h, w), short / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def one_pass(model, images: torch.Tensor, mode: str, crop_size=None, stride=None,
             window_batch: int = WINDOW_BATCH) -> torch.Tensor:
    if mode == "whole":
        return _logits(model, images)
    if mode == "slide":
        if crop_size is None or stride is None:
            raise ValueError("inference.mode=slide needs inference.crop_size and inference.stride ([H, W] each)")
        return slide(model, images, crop_size, stride, window_batch)
    raise ValueError(f"inference.mode={mode!r}; expected one of {', '.join(MODES)}")


@torch.no_grad()
def infer(model, images: torch.Tensor, mode: str = "whole", crop_size=None, stride=None, scales=None,
          flip: bool = False, base_scale=None, window_batch: int = WINDOW_BATCH) -> torch.Tensor:
    """Class scores (N, K, H, W) at the resolution of ``images`` (N, 3, H, W); see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"inference.mode={mode!r}; expected one of {', '.join(MODES)}")
    scales = [float(s) for s in (scales or [1.0])]
    if any(s <= 0 for s in scales):
        raise ValueError(f"inference.scales={scales}: scales must be positive")
    h, w = images.shape[-2:]
    bh, bw = fit_to_scale(h, w, base_scale) if base_scale else (h, w)
    flips = (False, True) if flip else (False,)
    passes = len(scales) * len(flips)
    total = None
    for s in scales:
        size = (max(1, int(bh * s + 0.5)), max(1, int(bw * s + 0.5)))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in flips:
            scores = one_pass(model, x.flip(-1) if flipped else x, mode, crop_size, stride, window_batch)
            if flipped:
                scores = scores.flip(-1)
            if scores.shape[-2:] != (h, w):
                scores = F.interpolate(scores, size=(h, w), mode="bilinear", align_corners=False)
            if passes == 1:
                return scores
            scores = scores.softmax(1)
            total = scores if total is None else total.add_(scores)
    return total.div_(passes)
