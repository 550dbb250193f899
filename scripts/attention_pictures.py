"""Pictures of what attention heads attend to, on the embedded dataset (the README's figures).

    python scripts/attention_pictures.py                       # train cc, da, ema briefly, draw them
    python scripts/attention_pictures.py --heads cc --iters 40 --out docs/images
    python scripts/attention_pictures.py --checkpoint outputs/.../checkpoints/best.pt --out /tmp/pics

Without ``--checkpoint`` each head is trained for ``--iters`` iterations by the library's trainer, on
conf/train.yaml with the given overrides as train.py would compose it (run directories under
``--runs``), then its ``checkpoints/last.pt`` is drawn on the first validation image: the marked
pixels are picked from the label (one per large class), and every attention module of the model
gets a picture (``segattn.viz.attention_pictures``), plus the per-class channel gates over the
validation images for gating heads (``segattn.viz.gate_pictures``). Each picture has a title and a
colour bar; docs/pictures.md says how to read them.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from segattn import viz  # noqa: E402
from segattn.data import build_dataset  # noqa: E402
from segattn.engine.checkpoint import model_from_checkpoint  # noqa: E402


def train_briefly(head: str, iters: int, run_dir: str, overrides: list[str]) -> str:
    """Train ``head`` for ``iters`` iterations with the library's trainer (``segattn.engine.train``) on
    conf/train.yaml composed with ``overrides`` as train.py composes it; returns checkpoints/last.pt."""
    from benchmarks.common import compose_config
    from segattn.engine import train

    cfg = compose_config([f"head={head}", f"trainer.max_iters={iters}", f"trainer.val_interval={iters}",
                          "trainer.num_workers=0", *overrides])
    train(cfg, run_dir)
    return os.path.join(run_dir, "checkpoints", "last.pt")


def pick_points(mask: np.ndarray, n: int, ignore_index: int = 255) -> list[list[int]]:
    """One pixel in each of the ``n`` largest classes of ``mask``: the class pixel nearest to the
    class's centroid (inside the region, also for a ring-shaped one)."""
    classes, counts = np.unique(mask[mask != ignore_index], return_counts=True)
    points = []
    for c in classes[np.argsort(-counts)][:n]:
        ys, xs = np.nonzero(mask == c)
        i = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
        points.append([int(ys[i]), int(xs[i])])
    return points


def draw(checkpoint: str, out_dir: str, points: list[list[int]] | None, n_points: int, colors: int,
         scale: float) -> list[str]:
    """The pictures of one checkpoint, as ``<out_dir>/attention_<head>_<module>.png``; returns the paths."""
    model, ckpt = model_from_checkpoint(checkpoint)
    cfg = ckpt["config"]
    d = cfg["dataset"]
    options = {k: v for k, v in d.items() if k not in ("name", "root")}
    val = build_dataset(d["name"], d["root"], d.get("val_split", "val"), **options)
    item = val[0]
    points = points or pick_points(item["mask"].numpy(), n_points)
    it = int(ckpt["iter"])
    head = cfg["head"]["name"]
    written = []

    def save(name: str, image: np.ndarray, text: str):
        path = os.path.join(out_dir, f"attention_{head}_{name.replace('/', '_').replace('.', '_')}.png")
        written.append(viz.save_png(viz.caption(image, text), path, colors=colors))

    # The pictures carry their own titles and colour bars; the caption adds the head and the training.
    # ``scale`` shrinks the image panels only (resizing the finished picture would shrink the text).
    for name, image in viz.attention_pictures(model, item["image"], points, draw_scale=scale).items():
        save(name, image, f"head={head}, {it} training iterations")
    samples = [(val[i]["image"], val[i]["mask"]) for i in range(len(val))]
    for name, image in viz.gate_pictures(model, samples, len(val.classes), list(val.classes)).items():
        save(name, image, f"head={head}, {it} training iterations, {len(samples)} validation images")
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", nargs="+", default=["cc", "da", "ema"])
    p.add_argument("--iters", type=int, default=40, help="training iterations per head")
    p.add_argument("--checkpoint", help="draw this checkpoint instead of training")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "images"))
    p.add_argument("--runs", default="/tmp/segattn_attention_pictures", help="run directories of the brief trainings")
    p.add_argument("--points", nargs="+", metavar="Y,X", help="pixels to mark (default: one per large class)")
    p.add_argument("--num-points", type=int, default=3)
    p.add_argument("--colors", type=int, default=128, help="PNG palette size (small files); 0 keeps full RGB")
    p.add_argument("--scale", type=float, default=0.5, help="draw the image panels at this factor of the image size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="train.py overrides for the brief trainings, e.g. trainer.batch_size=4")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # The configs' dataset root (data/mini_cityscapes) is relative to the repository.
    args.out, args.runs = os.path.abspath(args.out), os.path.abspath(args.runs)
    args.checkpoint = os.path.abspath(args.checkpoint) if args.checkpoint else None
    os.chdir(REPO)
    points = [[int(v) for v in s.split(",")] for s in args.points] if args.points else None
    written = []
    if args.checkpoint:
        written += draw(args.checkpoint, args.out, points, args.num_points, args.colors, args.scale)
    else:
        for head in args.heads:
            ckpt = train_briefly(head, args.iters, os.path.join(args.runs, head), args.overrides)
            written += draw(ckpt, args.out, points, args.num_points, args.colors, args.scale)
    for path in written:
        print(f"{path}  {os.path.getsize(path) // 1024} KiB")


if __name__ == "__main__":
    main()
