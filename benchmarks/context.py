"""Does a head see context? A synthetic task that only long-range context can solve.

    python benchmarks/context.py            # fcn, nl, da, cc, ema, oc, gc, ~2 min each on 2 cores -> results/context.md
    python benchmarks/context.py --quick    # 60 iterations per head (a few minutes in all)

The task, written in the Cityscapes layout and trained through the real trainer: every image is a
road with a coloured marker strip at its left edge and a few objects at its right end. All
objects look the same; their class is "car" when the marker is red and "truck" when it is blue.
The objects start further from the marker than the receptive field of ResNet-18-D8 + FCN reaches
(measured, not assumed: the gradient of every object pixel's logits with respect to the marker's
pixels is exactly zero), so a convolutional head cannot know their class and is at chance on
them, while a head that gathers over the whole image can read it from the marker.

Every head trains the same way (same data, seed and iterations; a tiny ResNet-18-D8 of width 8
from scratch, head width 32, AdamW), and is evaluated on held-out images: mIoU over the classes
present, and the IoU and recall of the two context-dependent classes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import fmt  # noqa: E402

HEADS = ["fcn", "nl", "da", "cc", "ema", "oc", "gc"]
# Cityscapes train ids used by the task.
ROAD, CLASS_A, CLASS_B = 0, 13, 14  # road, car, truck
# The marker's own class follows its colour (locally visible): red "traffic light", blue "traffic
# sign". Supervising the colour difference keeps it in the features the context heads pool; one
# label for both colours would teach the backbone to discard it.
MARKER = {CLASS_A: 6, CLASS_B: 7}
NAMES = {ROAD: "road", 6: "traffic light", 7: "traffic sign", CLASS_A: "car", CLASS_B: "truck"}
MARKER_W = 24
MARKER_RGB = {CLASS_A: (230, 30, 30), CLASS_B: (30, 30, 230)}
ROAD_RGB, OBJECT_RGB = (128, 64, 128), (150, 150, 150)
CITY = {"train": "contextville", "val": "contexttown"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default=None, help=f"comma-separated (default {','.join(HEADS)})")
    p.add_argument("--iters", type=int, default=None, help="training iterations per head (default 240, --quick 60)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", default="64x336", help="image HxW; the width must leave room beyond the receptive field")
    p.add_argument("--train-images", type=int, default=96)
    p.add_argument("--val-images", type=int, default=24)
    p.add_argument("--width", type=int, default=8, help="backbone.width (ResNet-18-D8; 8: c5 has 64 channels)")
    p.add_argument("--channels", type=int, default=32, help="head.channels")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--root", default=None, help="write/reuse the dataset here (default: a temporary folder)")
    p.add_argument("--keep-runs", default=None, help="keep each head's run directory under this folder")
    p.add_argument("--quick", action="store_true", help="40 iterations per head")
    p.add_argument("--out", default=common.RESULTS, help="folder for the result files")
    return p.parse_args(argv)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size must look like 96x352, got {text!r}") from None
    return h, w


# ----------------------------------------------------------------------------- the receptive field


def fcn_model(width: int, channels: int, num_classes: int = 19) -> torch.nn.Module:
    from segattn.models import build_model

    backbone = dict(common.compose_config([])["backbone"], width=width)
    return build_model(backbone, dict(common.head_config("fcn"), channels=channels), num_classes, {"weight": 0.0})


def receptive_radius(model: torch.nn.Module, size: tuple[int, int]) -> int:
    """How far (in input columns) the prediction at a pixel can depend on the input, measured by
    the gradient of the upsampled logits, as the evaluation upsamples them."""
    import torch.nn.functional as F

    h, w = size
    model.eval()
    x = torch.randn(1, 3, h, w, requires_grad=True)
    logits = F.interpolate(model(x)["out"], size=(h, w), mode="bilinear", align_corners=False)
    col = w - 1
    (g,) = torch.autograd.grad(logits[0, :, h // 2, col].sum(), x)
    cols = (g.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
    return int(col - cols.min())


def marker_influence(model: torch.nn.Module, images: torch.Tensor, x0: int) -> float:
    """Largest |d logits[object zone] / d marker pixels| over ``images``: zero means the model's
    predictions for the objects cannot depend on the marker."""
    import torch.nn.functional as F

    model.eval()
    x = images.clone().requires_grad_(True)
    logits = F.interpolate(model(x)["out"], size=x.shape[-2:], mode="bilinear", align_corners=False)
    (g,) = torch.autograd.grad(logits[..., x0:].sum(), x)
    return float(g[..., :MARKER_W].abs().max())


# ----------------------------------------------------------------------------- the dataset


def _texture(rng, h, w, theta, period):
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    return np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)


def scene(rng: np.random.Generator, h: int, w: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image, trainId label) pair; objects lie in columns >= x0."""
    cls = CLASS_A if rng.random() < 0.5 else CLASS_B
    lab = np.full((h, w), ROAD, np.uint8)
    lab[:, :MARKER_W] = MARKER[cls]
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(1, 4))):
        oh, ow = int(rng.integers(h // 5, h // 2)), int(rng.integers(12, max(13, (w - x0) // 2)))
        cy, cx = int(rng.integers(oh // 2, h - oh // 2)), int(rng.integers(x0 + ow // 2, w - ow // 2))
        if rng.random() < 0.5:
            inside = (np.abs(yy - cy) <= oh // 2) & (np.abs(xx - cx) <= ow // 2)
        else:
            inside = ((yy - cy) / (oh / 2)) ** 2 + ((xx - cx) / (ow / 2)) ** 2 <= 1
        lab[inside] = cls
    img = np.empty((h, w, 3), np.float32)
    img[:] = ROAD_RGB
    img += 25.0 * _texture(rng, h, w, 0.3, 9.0)[..., None]
    objects = (lab == CLASS_A) | (lab == CLASS_B)
    # Objects of both classes are drawn alike: only the marker tells them apart.
    img[objects] = np.asarray(OBJECT_RGB, np.float32) + 40.0 * _texture(rng, h, w, 1.2, 5.0)[objects][:, None]
    img[:, :MARKER_W] = MARKER_RGB[cls]
    img += rng.normal(0, 10, img.shape).astype(np.float32)
    img *= rng.uniform(0.85, 1.15)
    return img.clip(0, 255).astype(np.uint8), lab


def generate(root: str, size: tuple[int, int], x0: int, n_train: int, n_val: int, seed: int = 0) -> str:
    """Write the task in the Cityscapes layout (atomically: a temporary folder renamed)."""
    from PIL import Image

    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".context.", dir=parent)
    try:
        for i, (split, n) in enumerate((("train", n_train), ("val", n_val))):
            rng = np.random.default_rng([seed, i])
            city = CITY[split]
            img_dir = os.path.join(tmp, "leftImg8bit", split, city)
            gt_dir = os.path.join(tmp, "gtFine", split, city)
            os.makedirs(img_dir)
            os.makedirs(gt_dir)
            for k in range(n):
                img, lab = scene(rng, *size, x0)
                stem = f"{city}_{k:06d}_000019"
                Image.fromarray(img).save(os.path.join(img_dir, f"{stem}_leftImg8bit.png"))
                Image.fromarray(lab).save(os.path.join(gt_dir, f"{stem}_gtFine_labelTrainIds.png"))
        with open(os.path.join(tmp, "task.json"), "w") as f:
            json.dump({"size": list(size), "objects_from_column": x0, "marker_width": MARKER_W}, f)
        if os.path.isdir(root):
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# ----------------------------------------------------------------------------- training


def overrides(name: str, args, root: str, size: tuple[int, int], run_dir: str) -> list[str]:
    h, w = size
    return [
        f"head={name}", f"head.channels={args.channels}", f"backbone.width={args.width}",
        "model.aux_head.channels=32", "dataset=cityscapes", f"dataset.root={root}", f"dataset.crop_size=[{h},{w}]",
        # The whole image, unaugmented: a crop could cut the marker off, a flip would move it.
        "dataset.scale_range=[1.0,1.0]", "dataset.cat_max_ratio=1.0", "dataset.flip=false",
        "dataset.photometric=false", "dataset.inference.mode=whole", "dataset.inference.crop_size=null",
        "dataset.inference.stride=null", "optimizer=adamw", f"optimizer.lr={args.lr}",
        f"trainer.batch_size={args.batch}", f"trainer.max_iters={args.iters}", f"trainer.val_interval={args.iters}",
        f"trainer.log_interval={args.iters}", "trainer.num_workers=0", "trainer.progress=false",
        "trainer.device=cpu", "seed=0",
    ]


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def train_head(name: str, args, root: str, size, run_dir: str) -> dict:
    from segattn.engine.trainer import train

    cfg = common.compose_config(overrides(name, args, root, size, run_dir))
    log = io.StringIO()
    tic = time.perf_counter()
    with contextlib.redirect_stdout(log):
        metrics = train(cfg, run_dir)
    seconds = time.perf_counter() - tic
    iou, acc = metrics["IoU"], metrics["Acc"]
    objects = [NAMES[CLASS_A], NAMES[CLASS_B]]
    return {
        "head": name, "mIoU": metrics["mIoU"], "seconds": seconds,
        # Classes absent from a (tiny) validation set are None: averaged over those present.
        "object_mIoU": _mean([iou[c] for c in objects]),
        "object_recall": _mean([acc[c] for c in objects]),
        **{f"IoU_{c}": iou[c] for c in (NAMES[ROAD], "traffic light", "traffic sign", *objects)},
    }


def _pct(v) -> str:
    return "—" if v is None else fmt(100 * v, 1)


def write_results(results: list[dict], args, info: dict) -> list[str]:
    os.makedirs(args.out, exist_ok=True)
    md_path = os.path.join(args.out, "context.md")
    csv_path = os.path.join(args.out, "context.csv")
    fcn = next((r for r in results if r["head"] == "fcn"), None)
    rows = []
    for r in results:
        gain = "" if fcn is None or r is fcn else f"{100 * (r['mIoU'] - fcn['mIoU']):+.1f}"
        rows.append([r["head"], _pct(r["mIoU"]), gain, _pct(r["object_mIoU"]), _pct(r["object_recall"]),
                     _pct(r["IoU_car"]), _pct(r["IoU_truck"]), _pct(r["IoU_road"]),
                     _pct(_mean([r["IoU_traffic light"], r["IoU_traffic sign"]])),
                     fmt(r["seconds"], 0)])
    h, w = info["size"]
    lines = [
        "# Does the head see context?",
        "",
        f"Produced by `python benchmarks/context.py{' --quick' if args.quick else ''}` on: "
        f"{common.machine_line('cpu')}.",
        "",
        f"The task (`benchmarks/context.py`): {args.train_images} training and {args.val_images} validation images of "
        f"{h}x{w} in the Cityscapes layout. A road; a {MARKER_W}-pixel marker strip at the left edge, red (labelled "
        "\"traffic light\") or blue (\"traffic sign\"); one to three objects that all look alike, labelled \"car\" "
        "when the marker is red and "
        f"\"truck\" when it is blue, placed from column {info['x0']} on. The receptive field of ResNet-18-D8 + FCN "
        f"reaches {info['radius']} columns (the gradient of a pixel's upsampled logits with respect to the input is "
        f"exactly zero beyond that), so no object pixel's prediction can depend on the marker: measured on the "
        f"trained FCN, the largest gradient of the object zone's logits with respect to the marker's pixels is "
        f"{info['fcn_marker_grad']:.1g}. Guessing gives the objects about 50 % recall.",
        "",
        f"Training, the same for every head: train.py's trainer, ResNet-18-D8 of width {args.width} from scratch, head "
        f"width {args.channels} with conf/head hyper-parameters (cc: recurrence 2), auxiliary FCN head, AdamW lr "
        f"{args.lr}, {args.iters} iterations of batch {args.batch}, whole images without augmentation, seed 0. "
        "Validation: whole images, mIoU over the classes present (road, the two marker classes, car, truck, and any "
        "class a "
        "head predicts by mistake).",
        "",
        common.markdown_table(["head", "mIoU", "vs fcn", "object mIoU (car, truck)", "object recall", "car IoU",
                               "truck IoU", "road IoU", "marker IoU", "train s"], rows),
        "",
    ]
    lines += verdict(results, fcn)
    common.write_atomic(md_path, "\n".join(lines))
    keys = ["head", "mIoU", "object_mIoU", "object_recall", "IoU_car", "IoU_truck", "IoU_road", "IoU_traffic light",
            "IoU_traffic sign", "seconds"]
    common.write_csv(csv_path, keys, [[r[k] for k in keys] for r in results])
    return [md_path, csv_path]


def verdict(results: list[dict], fcn: dict | None) -> list[str]:
    if fcn is None:
        return []
    lines = []
    for r in results:
        if r is fcn:
            continue
        if r["object_recall"] is None or fcn["object_recall"] is None:
            continue
        d = r["object_recall"] - fcn["object_recall"]
        if d > 0.15:
            what = "reads the marker"
        elif d > 0.05:
            what = "reads the marker only partly in this budget"
        else:
            what = "does not beat the FCN on the objects in this budget"
        lines.append(f"- `{r['head']}`: object recall {fmt(100 * r['object_recall'], 1)} % against the FCN's "
                     f"{fmt(100 * fcn['object_recall'], 1)} %: {what}.")
    return lines + [""]


def main(argv=None) -> dict:
    args = parse_args(argv)
    with common.threads(args.threads):
        return run(args)


def run(args) -> dict:
    if args.iters is None:
        args.iters = 60 if args.quick else 240
    names = common.parse_names(args.heads, common.head_names()) if args.heads else list(HEADS)
    size = parse_size(args.size)
    from tqdm import tqdm

    work = tempfile.mkdtemp(prefix="segattn_context.")
    try:
        progress = tqdm(total=len(names) + 2, desc="context", dynamic_ncols=True)
        progress.set_postfix_str("receptive field")
        torch.manual_seed(0)
        radius = receptive_radius(fcn_model(args.width, args.channels), size)
        x0 = MARKER_W + radius + 8  # a few columns of margin
        if x0 + 24 > size[1]:
            raise SystemExit(f"--size {args.size}: objects must start at column {x0} (receptive field {radius}), "
                             f"which leaves no room; use a width of at least {x0 + 64}")
        root = args.root or os.path.join(work, "context_cityscapes")
        info = {"size": size, "radius": radius, "x0": x0}
        task = os.path.join(root, "task.json")
        if not (os.path.isfile(task) and json.load(open(task)) == {"size": list(size), "objects_from_column": x0,
                                                                      "marker_width": MARKER_W}
                and len(os.listdir(os.path.join(root, "leftImg8bit", "train", CITY["train"]))) == args.train_images):
            generate(root, size, x0, args.train_images, args.val_images)
        progress.update(1)
        results = []
        fcn_run = None
        for name in names:
            progress.set_postfix_str(f"train {name}")
            run_dir = os.path.join(args.keep_runs or work, f"run_{name}")
            results.append(train_head(name, args, root, size, run_dir))
            if name == "fcn":
                fcn_run = run_dir
            progress.update(1)
        progress.set_postfix_str("check FCN blindness")
        info["fcn_marker_grad"] = float("nan")
        if fcn_run is not None:
            info["fcn_marker_grad"] = fcn_blindness(fcn_run, root, args)
        progress.update(1)
        progress.close()
        paths = write_results(results, args, info)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for p in paths:
        print(f"wrote {os.path.relpath(p)}")
    return {"results": results, "info": info, "paths": paths}


def fcn_blindness(run_dir: str, root: str, args) -> float:
    """The trained FCN's largest object-zone gradient with respect to the marker, on validation images."""
    from segattn.data import CityscapesDataset
    from segattn.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))
    cfg = ckpt["config"]
    from segattn.models import build_model

    model = build_model(cfg["backbone"], cfg["head"], int(cfg["num_classes"]), {"weight": 0.0})
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("aux_head.")}
    model.load_state_dict(state)
    val = CityscapesDataset(root, "val")
    images = torch.stack([val[i]["image"] for i in range(min(4, len(val)))])
    x0 = json.load(open(os.path.join(root, "task.json")))["objects_from_column"]
    return marker_influence(model, images, x0)


if __name__ == "__main__":
    main()
