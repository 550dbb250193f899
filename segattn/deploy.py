"""A trained model outside train.py: ``segattn.load(path)`` to predict, ``export_model`` to deploy.

``load`` rebuilds a checkpoint's model from the config stored in it (as eval.py does) and returns a
:class:`Predictor`: the model in eval mode with its classes, palette, normalisation and inference
settings, and ``predict(image_or_list, inference=None, output="mask"|"probs")``.

``export_model`` writes the model as ONNX, TorchScript or a ``torch.export`` ExportedProgram, beside a
JSON with what a deployment needs to feed it and read it (classes, palette, mean/std, input size).
The exported graph takes **normalised** float32 images ``(N, 3, H, W)`` (RGB in [0, 1], minus
``mean``, divided by ``std``) and returns the logits ``(N, K, H, W)`` at the input's size: the
``whole`` inference mode. Slide and multi-scale inference are loops around that graph.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn

from .data.base import read_image
from .data.labels import palette_for
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_val_transform
from .engine.checkpoint import model_from_checkpoint
from .io import atomic_write
from .ops import size_hw
from .models.heads import head_facts, head_names
from .models.inference import KEYS, default_window, image_batch, inference_kwargs, one_pass
from .plugins import import_plugins

LIST_BATCH = 4  # images of one size per forward pass in predict(list), unless inference.batch_size says

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported_program": ".pt2"}

# Smallest input side of a dynamic export: below 64 px some heads' maps collapse to 1 pixel, a
# different branch of their code.
MIN_SIDE, MAX_SIDE = 64, 4096


def _default_names(n: int) -> list[str]:
    return [f"class_{i}" for i in range(n)]


def array_to_rgb(image: np.ndarray, where: str = "image") -> np.ndarray:
    """A picture as an array -> H x W x 3 uint8 RGB, the way a file or PIL image of it is read: gray
    (H x W or H x W x 1) is repeated over the three channels and RGBA drops its alpha (PIL's
    ``convert("RGB")``); float arrays are taken as [0, 1] (matplotlib's and skimage's convention)."""
    a = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or min(a.shape[:2]) == 0:
        raise ValueError(f"{where}: expected an H x W x 3 RGB, H x W gray or H x W x 4 RGBA array, got shape "
                         f"{image.shape}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"{where}: a float array must hold values in [0, 1], got {float(np.nanmin(a)):g} to "
                             f"{float(np.nanmax(a)):g}; for 0-255 values pass them as uint8 "
                             f"(image.astype(np.uint8))")
        a = np.round(a * 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"{where}: expected a uint8 array (0-255) or a float array in [0, 1], got dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


class Predictor(nn.Module):
    """A trained segmentor with what it needs to predict on raw pictures (see ``segattn.load``).

    ``forward(images)`` is the model's (normalised ``(N, 3, H, W)`` -> dict of logits at feature
    resolution); ``predict`` takes pictures and returns class ids (or probabilities) at their size.
    """

    def __init__(self, model: nn.Module, classes, palette=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 inference: dict | None = None, crop_size=None, config: dict | None = None):
        super().__init__()
        self.model = model.eval()
        num_classes = int(model.num_classes)
        self.classes = list(classes) if classes else _default_names(num_classes)
        self.palette = np.asarray(palette if palette is not None else palette_for(num_classes, classes or None)[:num_classes],
                                  dtype=np.uint8)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.inference = {k: v for k, v in (inference or {"mode": "whole"}).items() if v is not None}
        self.crop_size = list(crop_size) if crop_size else None
        self.config = config or {}
        self.transform = build_val_transform(self.mean, self.std)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, images: torch.Tensor):
        return self.model(images)

    def settings(self, inference=None) -> dict:
        """The keyword arguments of ``Segmentor.predict``: the checkpoint's ``dataset.inference`` with
        ``inference`` on top (a mode name such as ``"slide"``, or a dict of ``inference.*`` keys).
        A slide without a window uses the training crop, windows 2/3 of it apart."""
        return inference_kwargs(self._inference_node(inference))

    def _inference_node(self, inference=None) -> dict:
        if isinstance(inference, str):
            inference = {"mode": inference}
        elif inference is not None and not isinstance(inference, dict):
            raise TypeError(f"inference={inference!r}: expected a mode name ('whole', 'slide') or a dict of "
                            f"inference keys ({', '.join(KEYS)})")
        node = dict(self.inference)
        node.update({k: v for k, v in (inference or {}).items() if v is not None})
        return default_window(node, self.crop_size)

    def _rgb(self, image, where: str) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            return read_image(os.fspath(image))  # names the file when it cannot be read
        if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, in any mode
            return np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            return array_to_rgb(image, where)
        raise TypeError(f"{where}: expected a numpy array (H x W x 3 RGB, H x W gray or H x W x 4 RGBA; uint8, or "
                        f"float in [0, 1]), a PIL image or a path, got {type(image).__name__}")

    @torch.no_grad()
    def predict(self, image_or_list, inference=None, output: str = "mask"):
        """Class ids ``(H, W)`` int64 at the image's size (``output="mask"``), or class probabilities
        ``(K, H, W)`` float32 (``output="probs"``), for one image (a numpy array: H x W x 3 RGB, H x W gray
        or H x W x 4 RGBA, uint8 or float in [0, 1]; a PIL image; a path); a list of images gives a list,
        predicted ``inference.batch_size`` images of one size at a time (default 4; the same numbers as one
        by one). ``inference`` overrides the checkpoint's settings: a mode (``"whole"``, ``"slide"``) or a
        dict (``mode``, ``crop_size``, ``stride``, ``scales``, ``flip``, ``base_scale``, ``window_batch``,
        ``batch_size``), as eval.py's ``inference.*``."""
        if output not in ("mask", "probs"):
            raise ValueError(f"output={output!r}; expected 'mask' or 'probs'")
        node = self._inference_node(inference)
        kwargs = inference_kwargs(node)
        batch = image_batch(node) if node.get("batch_size") is not None else LIST_BATCH
        passes = len(kwargs.get("scales") or [1.0]) * (2 if kwargs.get("flip") else 1)
        single = not isinstance(image_or_list, (list, tuple))
        images = [image_or_list] if single else list(image_or_list)
        self.model.eval()
        results = []
        pending: list[torch.Tensor] = []

        def flush():
            scores = self.model.predict(torch.stack(pending).to(self.device), **kwargs)
            for s in scores:
                if output == "mask":
                    results.append(s.argmax(0).cpu().numpy().astype(np.int64))
                else:  # one pass gives logits, several give averaged probabilities already
                    results.append((s.softmax(0) if passes == 1 else s).float().cpu().numpy())
            pending.clear()

        for i, image in enumerate(images):
            x = self.transform(image=self._rgb(image, "image" if single else f"image {i}"))["image"]
            if pending and (x.shape != pending[0].shape or len(pending) == batch):
                flush()
            pending.append(x)
        if pending:
            flush()
        return results[0] if single else results


def load(path: str, device="cpu", plugins: list[str] | None = None) -> Predictor:
    """The trained model in the segattn checkpoint ``path`` (a ``.pt`` checkpoint, or the
    ``best.safetensors`` weights a run writes, which load without unpickling), in eval mode on ``device``
    (see :class:`Predictor`). Refuses files segattn did not write, with the messages eval.py gives.
    ``plugins``: modules or ``.py`` files to import first, for a checkpoint whose head is a plugin's
    (the checkpoint names it, but never imports code by itself)."""
    import_plugins(plugins)
    model, ckpt = model_from_checkpoint(path)
    cfg = ckpt["config"]
    dataset = cfg.get("dataset") or {}
    predictor = Predictor(model, list(cfg.get("classes") or []), cfg.get("palette"), dataset.get("mean") or IMAGENET_MEAN,
                          dataset.get("std") or IMAGENET_STD, dataset.get("inference"),
                          dataset.get("crop_size"), cfg)
    return predictor.to(torch.device(device)).eval()


class ExportGraph(nn.Module):
    """What is exported: normalised images -> logits at the input's size (one ``whole`` pass)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return one_pass(self.model, images, "whole")


def export_limits(head: str) -> tuple[dict[str, str], dict[str, str]]:
    """The head's declared export limits (``export_static_only``, ``export_unsupported``: format -> why).
    Every head exports with dynamic sizes in every format except where these say otherwise; the
    per-head test (tests/test_deploy.py) checks every other (head, format) pair on a second input size."""
    if head not in head_names():
        return {}, {}
    facts = head_facts(head)
    return facts.export_static_only, facts.export_unsupported


def export_reason(head: str, fmt: str, dynamic: bool) -> str | None:
    """Why ``head`` cannot be exported as ``fmt`` (with ``dynamic`` sizes), or None when it can."""
    static_only, unsupported = export_limits(head)
    if fmt in unsupported:
        return unsupported[fmt]
    if dynamic and fmt in static_only:
        return static_only[fmt] + "; export it with dynamic=false at the size it will run at"
    return None


def _check(fmt: str, input_size) -> tuple[int, int]:
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}; expected one of {', '.join(FORMATS)}")
    return size_hw(input_size, "input_size")


def _exported_program(graph: nn.Module, example: torch.Tensor, dynamic: bool):
    from torch.export import Dim, export

    shapes = None
    if dynamic:
        shapes = {"images": {0: Dim("batch", min=1, max=1024), 2: Dim("height", min=MIN_SIDE, max=MAX_SIDE),
                             3: Dim("width", min=MIN_SIDE, max=MAX_SIDE)}}
    # Guards symbolic reasoning cannot prove for every size (a map wider than one pixel) become
    # run-time checks instead of failing the export.
    return export(graph, (example,), dynamic_shapes=shapes, strict=False,
                  prefer_deferred_runtime_asserts_over_guards=True)


def json_path(path: str, fmt: str | None = None) -> str:
    """The JSON beside an exported file, one per file: ``model.onnx`` -> ``model.onnx.json``, so exporting
    another format of the same checkpoint (``model.pt2`` -> ``model.pt2.json``) keeps the first one's."""
    return path + ".json"


@contextlib.contextmanager
def quiet_exporters(verbose: bool = False):
    """Without ``verbose``: the exporters' progress prints, INFO logs (torch.onnx, onnxscript's
    optimiser: hundreds of lines for an attention head) and deprecation warnings are held back; when
    the export fails, what they printed is shown after all, since it may say why."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export", "torch._export",
                                                "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    held = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(held):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_model(model: nn.Module, path: str, fmt: str, input_size=(512, 1024), dynamic: bool = False,
                 head: str | None = None, meta: dict | None = None, verbose: bool = False) -> dict:
    """Write ``model`` (a Segmentor, or a :class:`Predictor`) to ``path`` as ``fmt`` (onnx |
    torchscript | exported_program), and ``json_path(path, fmt)`` beside it; returns the JSON.

    ``input_size`` ``[H, W]`` is the example input's size; with ``dynamic`` the batch, height and
    width (``MIN_SIDE``..``MAX_SIDE``) stay free. ``head`` (read from a Predictor's config if not
    given) is looked up in its export limits (:func:`export_limits`) first, so a head that cannot do what was
    asked says why instead of exporting a graph that is wrong at other sizes.
    """
    h, w = _check(fmt, input_size)
    meta = dict(meta or {})
    if isinstance(model, Predictor):
        head = head or (model.config.get("head") or {}).get("name")
        meta = {"classes": model.classes, "palette": model.palette.tolist(), "mean": list(model.mean),
                "std": list(model.std), **meta}
        model = model.model
    reason = export_reason(head, fmt, dynamic) if head else None
    if reason:
        raise ValueError(f"head={head} cannot be exported as {fmt}{' with dynamic sizes' if dynamic else ''}: {reason}")
    num_classes = int(model.num_classes)
    # Custom class names get the readable palette, not Cityscapes' colours for any 19 classes.
    meta.setdefault("palette", palette_for(num_classes, meta.get("classes"))[:num_classes].tolist())
    meta.setdefault("classes", _default_names(num_classes))
    meta.setdefault("mean", list(IMAGENET_MEAN))
    meta.setdefault("std", list(IMAGENET_STD))

    param = next(model.parameters())
    graph = ExportGraph(model).eval()
    # A batch of 2 at export: torch.export specialises a dimension of size 1.
    # A dynamic export's example is at least MIN_SIDE a side (a smaller training crop is still in range).
    ex_h, ex_w = (max(h, MIN_SIDE), max(w, MIN_SIDE)) if dynamic else (h, w)
    example = torch.randn(2 if dynamic else 1, 3, ex_h, ex_w, device=param.device, dtype=param.dtype)
    with torch.no_grad(), quiet_exporters(verbose):
        if fmt == "exported_program":
            program = _exported_program(graph, example, dynamic)
            with atomic_write(path) as f:
                torch.export.save(program, f)
        elif fmt == "torchscript":
            traced = torch.jit.trace(graph, (example,), check_trace=False)
            with atomic_write(path) as f:
                torch.jit.save(traced, f)
        else:  # ONNX from the same ExportedProgram, so it has the same dynamic sizes
            program = _exported_program(graph, example, dynamic)
            onnx_program = torch.onnx.export(program, (example,), input_names=["images"], output_names=["logits"],
                                             dynamo=True, verbose=False)
            with atomic_write(path) as f:
                f.write(onnx_program.model_proto.SerializeToString())
    info = {"format": fmt, "file": os.path.basename(path), "head": head,
            "input": {"name": "images", "shape": ["N" if dynamic else 1, 3, "H" if dynamic else h, "W" if dynamic else w],
                      "dtype": "float32", "layout": "NCHW RGB, (pixel / 255 - mean) / std"},
            "output": {"name": "logits", "shape": ["N" if dynamic else 1, len(meta["classes"]), "H" if dynamic else h,
                                                   "W" if dynamic else w], "argmax over dim 1": "class ids"},
            "input_size": [h, w], "dynamic": bool(dynamic),
            "dynamic_range": [MIN_SIDE, MAX_SIDE] if dynamic else None, **meta}
    with atomic_write(json_path(path, fmt), "w") as f:
        json.dump(info, f, indent=2)
    return info


def exported_format(path: str) -> str | None:
    """The format of a file ``export_model`` wrote: the ``format`` its JSON beside it records (any file
    name), else the one its suffix names; None when neither tells."""
    meta = json_path(os.fspath(path))
    if os.path.isfile(meta):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(meta) as f:
                fmt = json.load(f).get("format")
            if fmt in FORMATS:
                return fmt
    return next((f for f, ext in FORMATS.items() if os.fspath(path).endswith(ext)), None)


def load_exported(path: str, fmt: str | None = None):
    """A callable ``images -> logits`` (torch tensors in and out, never requiring grad) for a file
    ``export_model`` wrote, whatever its name: the format comes from ``fmt``, else the JSON beside the file,
    else its suffix. ONNX files run with onnxruntime (``pip install segattn[export]``)."""
    path = os.fspath(path)
    fmt = fmt or exported_format(path)
    if fmt == "exported_program":
        module = torch.export.load(path).module()
        for p in module.parameters():
            p.requires_grad_(False)  # plain tensors out, as from the ONNX session
        return module
    if fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export, and says so
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            module = torch.jit.load(path, map_location="cpu")
        for p in module.parameters():
            p.requires_grad_(False)  # plain tensors out (``.numpy()`` works), as from the ONNX session
        return module.eval()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: torch.from_numpy(session.run(None, {name: images.detach().cpu().numpy()})[0])
    raise ValueError(f"{path!r}: cannot tell the format: no {os.path.basename(json_path(path))} beside it records "
                     f"one and the name has none of the suffixes {', '.join(FORMATS.values())}; pass "
                     f"fmt='onnx'|'torchscript'|'exported_program'")


def export_checkpoint(checkpoint: str, fmt: str, output: str | None = None, input_size=None,
                      dynamic: bool | None = None, device="cpu", verbose: bool = False,
                      plugins: list[str] | None = None) -> dict:
    """What ``export.py`` does: ``load`` the checkpoint and ``export_model`` it to ``output`` (default:
    beside the checkpoint, ``best.pt`` -> ``best.onnx``) with an example input of ``input_size`` (default:
    the training crop). ``dynamic=None`` (the default): dynamic sizes where the head allows it in this
    format, else fixed at ``input_size``, and ``fixed_because`` in the result says why. Returns the JSON
    written, with ``path`` and ``json`` (and ``fixed_because``) added. ``plugins``: as ``load``'s."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}; expected one of {', '.join(FORMATS)}")
    predictor = load(checkpoint, device, plugins)
    size = input_size or predictor.crop_size
    if not size:
        raise ValueError(f"input_size is null and checkpoint={checkpoint!r} records no dataset.crop_size; "
                         f"set input_size=[H,W]")
    path = output or os.path.splitext(checkpoint)[0] + FORMATS[fmt]
    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        except ImportError:
            raise ValueError("format=onnx needs the export extra: pip install -e '.[export]' "
                             "(onnx, onnxscript, onnxruntime)") from None
    fixed_because = None
    if dynamic is None:
        head = (predictor.config.get("head") or {}).get("name")
        static_only, unsupported = export_limits(head) if head else ({}, {})
        dynamic = fmt not in static_only or fmt in unsupported  # an unsupported format refuses either way
        fixed_because = None if dynamic else f"head={head} as {fmt}: {static_only[fmt]}"
    info = export_model(predictor, path, fmt, size, dynamic,
                        meta={"checkpoint": os.path.abspath(checkpoint), "inference": predictor.inference},
                        verbose=verbose)
    return {**info, "path": path, "json": json_path(path, fmt), "fixed_because": fixed_because}


def export_summary(head: str) -> str:
    """One line for the README's heads table (scripts/heads_table.py): which formats export with
    dynamic sizes, which at a fixed size, which not, and why. tests/test_deploy.py checks each claim."""
    static_only, not_exported = export_limits(head)
    dynamic = [f for f in FORMATS if export_reason(head, f, True) is None]
    fixed = [f for f in FORMATS if f not in dynamic and f not in not_exported]
    unsupported = [f for f in FORMATS if f in not_exported]
    if len(dynamic) == len(FORMATS):
        return "all (dynamic sizes)"
    parts = []
    if dynamic:
        parts.append(f"{', '.join(dynamic)}: dynamic")
    if fixed:
        parts.append(f"{', '.join(fixed)}: fixed size")
    if unsupported:
        parts.append(f"not {', '.join(unsupported)}")
    reasons = list(dict.fromkeys(static_only.get(f) or not_exported[f] for f in fixed + unsupported))
    reasons = [r for r in reasons if not any(o != r and o.startswith(r) for o in reasons)]  # said once
    return f"{'; '.join(parts)} ({'; '.join(reasons)})"
