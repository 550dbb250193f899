"""Inference one image (or one window) at a time against in batches: what batching buys at eval time.

    python benchmarks/inference.py             # CPU -> results/inference.md, .csv
    python benchmarks/inference.py --quick     # 1 round, smaller images -> results/quick/
    python benchmarks/inference.py --device cuda   # -> results/inference_cuda.md, .csv

The default model of ``train.py`` (ResNet-18-D8 + FCN, 19 classes) and the same backbone with DANet's
head, in eval mode, on random images of the embedded dataset's size (256 x 512):

- ``whole``: 8 images predicted one at a time (``inference.batch_size=1``) and 4 at a time;
- ``slide``: 2 images in 128 x 128 windows 85 apart (3 x 6 windows each), one window per forward
  (``inference.window_batch=1``) and 4 per forward.

Both forms give the same numbers (tests/test_batched_inference.py); here only their time is compared,
interleaved round by round in one process (the machine is shared: the ratio is what carries over).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import fmt  # noqa: E402
from segattn.models.inference import infer  # noqa: E402

HEADS = ["fcn", "da"]
BATCH = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default=None, help=f"comma-separated (default {','.join(HEADS)})")
    common.add_run_args(p, quick="1 round, 64 x 128 images and 32 x 32 windows")
    return p.parse_args(argv)


def build(head: str, device) -> torch.nn.Module:
    from segattn.models import build_model_from_config

    torch.manual_seed(0)
    cfg = common.compose_config([f"head={head}"])
    return build_model_from_config(cfg, 19, pretrained=False).to(device).eval()


def cases_for(model, size, window, device) -> dict:
    h, w = size
    images = torch.randn(2 * BATCH, 3, h, w, device=device)
    pair = images[:2]
    stride = [max(1, (2 * window + 2) // 3)] * 2

    def whole_one():
        for i in range(len(images)):
            infer(model, images[i:i + 1], "whole")

    def whole_batched():
        for i in range(0, len(images), BATCH):
            infer(model, images[i:i + BATCH], "whole")

    def slide(window_batch):
        return lambda: [infer(model, pair[i:i + 1], "slide", [window] * 2, stride, window_batch=window_batch)
                        for i in range(len(pair))]

    return {"whole/one": whole_one, "whole/batched": whole_batched, "slide/one": slide(1), "slide/batched": slide(BATCH)}


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    names = common.parse_names(args.heads, HEADS)
    args.rounds = args.rounds or (1 if args.quick else 3)
    size, window = ((64, 128), 32) if args.quick else ((256, 512), 128)
    out = common.results_dir(args.out, quick=args.quick, partial=args.heads is not None)
    cases = {}
    for name in names:
        model = build(name, device)
        cases.update({f"{name}/{k}": fn for k, fn in cases_for(model, size, window, device).items()})
    with torch.no_grad():
        times = common.time_interleaved(cases, args.rounds, args.warmup, device)
    rows = []
    for name in names:
        for mode in ("whole", "slide"):
            one, batched = times[f"{name}/{mode}/one"], times[f"{name}/{mode}/batched"]
            rows.append({"head": name, "mode": mode, "one_s": one, "batched_s": batched, "ratio": batched / one})
    tag = "" if device.type == "cpu" else "_cuda"
    headers = ["head", "mode", "one_s", "batched_s", "ratio"]
    paths = [common.write_csv(os.path.join(out, f"inference{tag}.csv"), headers,
                              [[r[h] if isinstance(r[h], str) else round(r[h], 4) for h in headers] for r in rows])]
    what = {"whole": f"{2 * BATCH} images of {size[0]}x{size[1]}, one per forward vs {BATCH} per forward "
                     f"(`inference.batch_size`)",
            "slide": f"2 images of {size[0]}x{size[1]} in {window}x{window} windows, one window per forward vs "
                     f"{BATCH} (`inference.window_batch`)"}
    lines = [f"# Batched inference{' (quick)' if args.quick else ''}", "",
             f"Produced by `python benchmarks/inference.py{' --quick' if args.quick else ''}` on: "
             f"{common.machine_line(device)}; median of {args.rounds} interleaved round(s) after {args.warmup} warm-up. "
             "ResNet-18-D8 with each head, 19 classes, eval mode, random images; both forms give the same numbers "
             "(tests/test_batched_inference.py).", "",
             common.markdown_table(["head", "mode", "what", "one at a time (s)", "batched (s)", "batched / one"],
                                   [[r["head"], r["mode"], what[r["mode"]], fmt(r["one_s"], 3), fmt(r["batched_s"], 3),
                                     f"{fmt(r['ratio'], 2)}x"] for r in rows], align="lll" + "r" * 3), ""]
    paths.append(common.write_atomic(os.path.join(out, f"inference{tag}.md"), "\n".join(lines)))
    for p in paths:
        print(f"wrote {os.path.relpath(p)}")
    return {"rows": rows, "paths": paths}


def main(argv=None) -> dict:
    args = parse_args(argv)
    with common.threads(args.threads):
        return run(args)


if __name__ == "__main__":
    main()
