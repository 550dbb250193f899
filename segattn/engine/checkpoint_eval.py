"""What ``eval.py`` does: rebuild a checkpoint's model and dataset, evaluate a split, export predictions.

Everything comes from the config stored in the checkpoint -- the model, the dataset choice and its
validation ``inference`` settings -- so by default a checkpoint is evaluated exactly as validation
during training did; the eval config only overrides what it sets (``dataset.root``, ``inference.*``).
"""

from __future__ import annotations

import os
import sys
import warnings


from ..config import EvalConfig
from ..data import FolderDataset, build_dataset
from ..models.inference import default_window, inference_kwargs
from .checkpoint import load_checkpoint, model_from_checkpoint
from .distributed import resolve_device
from .evaluate import PerImageScores, evaluate, speed, speed_line, val_loader
from .predictions import PredictionWriter, check_format
from .logging import confusion_csv, iou_table, metrics_json, write_json
from ..io import atomic_write
from ..plugins import import_plugins
from ..viz import confusion_image, save_png, write_attention_pictures


def _some(names, n: int = 4) -> str:
    """The first ``n`` names, with ``...`` only when some are left out."""
    names = list(names)
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _set(node: dict | None) -> dict:
    """The keys an eval config node sets (null means: as in the checkpoint)."""
    return {k: v for k, v in (node or {}).items() if v is not None}


def _dataset(cfg: EvalConfig, train_cfg: dict, d: dict, split: str, export_dir: str | None):
    """``(dataset, classes, num_classes, source)`` to evaluate (``source``: the data in words): ``images=`` or the dataset node ``d`` at ``split``,
    checked against the classes the checkpoint ``cfg.checkpoint`` predicts."""
    path = cfg.checkpoint
    classes = list(train_cfg.get("classes") or [])
    if cfg.images:  # a plain folder of pictures, predicted with the checkpoint's classes
        dataset = FolderDataset(cfg.images, None, classes, palette=train_cfg.get("palette"))
        source = f"images={cfg.images!r}"
    else:
        options = {k: v for k, v in d.items() if k not in ("name", "root")}
        if d["name"] == "folder" and not options.get("classes"):
            options["classes"] = classes
        dataset = build_dataset(d["name"], d["root"], split, **options)
        source = f"dataset {d['name']} at {d['root']!r} (split {split})"
    classes = classes or list(dataset.classes)
    num_classes = int(train_cfg.get("num_classes", len(classes)))
    if dataset.num_classes != num_classes:
        raise ValueError(f"checkpoint={path!r} predicts {num_classes} classes (trained on "
                         f"{train_cfg['dataset']['name']}: {_some(classes)}) but {source} has "
                         f"{dataset.num_classes}; evaluate it on data of the classes it was trained on")
    if tuple(dataset.classes) != tuple(classes) and dataset.has_masks:
        warnings.warn(f"{source} names its classes {_some(dataset.classes)} but checkpoint={path!r} "
                      f"was trained on {_some(classes)}; the metrics pair them by index")
    if not dataset.has_masks and not export_dir:
        raise ValueError(f"{source} has no masks, so there is nothing to measure; set export_dir=DIR "
                         f"(and export_format=labelids|trainids|color) to write the predictions")
    return dataset, classes, num_classes, source


def evaluate_checkpoint(cfg: dict | EvalConfig, run_dir: str) -> dict:
    """Evaluate ``cfg.checkpoint`` as configured (conf/eval.yaml as a plain dict, or an ``EvalConfig``);
    writes ``<run_dir>/eval.json`` and returns its content."""
    cfg = EvalConfig.from_dict(cfg)
    import_plugins(cfg.plugins)  # the checkpoint's head, if a plugin's (the checkpoint never imports it)
    path = cfg.checkpoint
    ckpt = load_checkpoint(path)
    train_cfg = ckpt["config"]

    d = dict(train_cfg["dataset"])
    overrides = _set(cfg.dataset)
    split = overrides.pop("split", None) or d.get("val_split", "val")
    d.update(overrides)
    inference = dict(d.get("inference") or {"mode": "whole"})
    inference.update(_set(cfg.inference.to_dict()))
    # A slide without a window: the training crop, windows 2/3 of it apart (as segattn.load's predict).
    inference = default_window(inference, train_cfg["dataset"].get("crop_size"))
    inference_kwargs(inference)  # a bad inference node fails now, not after the model has loaded
    export_dir, fmt = cfg.export_dir, cfg.export_format or "labelids"
    if export_dir:
        check_format(fmt)

    dataset, classes, num_classes, source = _dataset(cfg, train_cfg, d, split, export_dir)

    device = resolve_device(cfg.device, "device")
    model, _ = model_from_checkpoint(path, ckpt, num_classes)
    print(f"evaluating {os.path.abspath(path)} (iteration {int(ckpt['iter'])}, head={_head(train_cfg)}) on "
          f"{source}: {len(dataset)} image{'s' if len(dataset) != 1 else ''}, {describe_inference(inference)}", file=sys.stderr)
    model.to(device)
    # Images keep their own size (the benchmarks score full resolution); inference.batch_size of one size at a time.
    loader = val_loader(dataset, inference, cfg.num_workers)
    writer = PredictionWriter(export_dir, fmt, dataset) if export_dir else None
    scores = PerImageScores(classes) if dataset.has_masks else None
    metrics, _ = evaluate(model, loader, num_classes, device, progress=cfg.progress,
                          inference=inference, on_prediction=writer, on_scored=scores)

    info = {"checkpoint": os.path.abspath(path), "iter": int(ckpt["iter"]), "dataset": d["name"],
            "root": cfg.images or d["root"], "split": None if cfg.images else split,
            "images": len(dataset), "inference": inference,
            "speed": speed(metrics["timing"], inference, device, loader.batch_size)}
    vis = cfg.visualize
    if vis.points or vis.out_dir:
        vis_dir = vis.out_dir or os.path.join(run_dir, "attention")
        pictures = write_attention_pictures(model, dataset, vis_dir, vis.points, vis.num_images, vis.max_size)
        info["attention_pictures"] = {"dir": os.path.abspath(vis_dir), "files": len(pictures)}
    if writer is not None:
        info["export"] = {"dir": os.path.abspath(export_dir), "format": fmt, "files": writer.written}
    if dataset.has_masks:
        info["confusion_matrix"] = write_confusion(metrics["confusion"], classes, run_dir, dataset.palette)
        info["per_image"] = write_per_image(scores, run_dir)
        result = metrics_json(metrics, classes, **info)
        print(iou_table(metrics, classes, full=True))
        worst = ", ".join(f"{os.path.basename(p)} ({100 * m:.1f} %)" for p, m, *_ in scores.worst(3) if m == m)
        print(f"lowest per-image mIoU: {worst or 'none (no labelled pixels)'} (all images: {info['per_image']})")
    else:
        result = info
    print(speed_line(info["speed"]))
    write_json(result, os.path.join(run_dir, "eval.json"))
    say_written(info, run_dir, dataset.has_masks)
    return result


def _head(train_cfg: dict) -> str:
    return (train_cfg.get("head") or {}).get("name", "?")


def say_written(info: dict, run_dir: str, has_masks: bool) -> None:
    """eval.py's last lines: every file it wrote, one a line (eval.log, the console, is beside eval.json)."""
    names = ["eval.json"] + (["confusion_matrix.csv", "confusion_matrix.png", "per_image.csv"] if has_masks else [])
    for name in names:
        print(f"wrote {os.path.join(run_dir, name)}", file=sys.stderr)
    if "attention_pictures" in info:
        pictures = info["attention_pictures"]
        print(f"wrote {pictures['files']} attention pictures to {pictures['dir']}", file=sys.stderr)
    if "export" in info:
        export = info["export"]
        print(f"wrote {export['files']} predictions ({export['format']}) to {export['dir']}", file=sys.stderr)


def describe_inference(node: dict) -> str:
    """The inference settings in words: ``whole images`` or ``slide windows 64x64, stride 43x43``, then
    scales and flip when set."""
    if node.get("mode") == "slide":
        crop, stride = node["crop_size"], node["stride"]
        text = f"inference slide: windows {crop[0]}x{crop[1]}, stride {stride[0]}x{stride[1]}"
    else:
        text = "inference whole: each image in one pass"
    if node.get("scales") and [float(s) for s in node["scales"]] != [1.0]:
        text += f", scales {[float(s) for s in node['scales']]}"
        if node.get("base_scale") is not None:
            text += f" of base_scale {node['base_scale']}"
    if node.get("flip"):
        text += ", flip"
    return text


def write_per_image(scores: PerImageScores, run_dir: str) -> str:
    """``per_image.csv`` in ``run_dir``: each image's mIoU, pixel accuracy and per-class IoU, worst first."""
    path = os.path.join(run_dir, "per_image.csv")
    with atomic_write(path, "w") as f:
        f.write(scores.csv())
    return os.path.abspath(path)


def write_confusion(confusion, classes, run_dir: str, palette=None) -> dict:
    """``confusion_matrix.csv`` (pixel counts, rows ground truth, columns prediction, class names on both)
    and ``confusion_matrix.png`` (the picture TensorBoard shows during training) in ``run_dir``."""
    csv_path, png_path = (os.path.join(run_dir, f"confusion_matrix.{ext}") for ext in ("csv", "png"))
    with atomic_write(csv_path, "w") as f:
        f.write(confusion_csv(confusion, classes))
    save_png(confusion_image(confusion, class_names=classes, palette=palette), png_path)
    return {"csv": os.path.abspath(csv_path), "png": os.path.abspath(png_path)}
