"""What a checkpoint costs against a training step, at a published recipe's size: how often to save.

    python benchmarks/checkpoint.py            # CPU, CCNet R50-D8 Cityscapes recipe -> results/checkpoint.md, .csv
    python benchmarks/checkpoint.py --quick    # 1 round, a 256 x 512 crop -> results/quick/
    python benchmarks/checkpoint.py --device cuda   # -> results/checkpoint_cuda.md, .csv

The recipe's model and optimizer (``+experiment=cc_r50_d8_cityscapes_80k``: R50-D8 + criss-cross head +
auxiliary head, SGD with momentum) after one step, so the momentum buffers exist as in a real run. Timed,
interleaved round by round in one process:

- ``step``: one training step (``segattn.engine.trainer.train_step``) on the recipe's per-process batch
  and crop (``--crop``, ``--batch`` to change them);
- ``save``: ``last.pt`` as the trainer writes it (weights, optimizer, schedule, random states; to
  ``<name>.tmp``, flushed to disk with fsync, renamed) into ``--dir`` (default: a temporary folder in
  the working directory, i.e. on the disk runs write to);
- ``load``: the same file read back with ``weights_only=True`` (what a restart pays once).

From these: what a checkpoint every N iterations or every M minutes (``trainer.ckpt_interval``,
``trainer.ckpt_interval_min``) adds to the training time, and how much work a lost rank or a killed job
can lose at most (one interval).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import fmt  # noqa: E402
from segattn.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint  # noqa: E402
from segattn.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from segattn.engine.trainer import train_step  # noqa: E402
from segattn.models import build_model_from_config  # noqa: E402

EXPERIMENT = "cc_r50_d8_cityscapes_80k"
EVERY_ITERS = [1000, 4000, 8000]  # mmseg's Cityscapes 80k recipes save every 8000
EVERY_MIN = [5, 15, 30]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default=EXPERIMENT, help=f"conf/experiment/<name>.yaml (default {EXPERIMENT})")
    p.add_argument("--crop", default=None, help="H,W of the training crop (default: the recipe's; --quick 256,512)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: the recipe's per process)")
    p.add_argument("--dir", default=None, help="folder the checkpoints are written to (default: a temporary one here)")
    p.add_argument("overrides", nargs="*", help="more config overrides (e.g. backbone=resnet18 for a tiny run)")
    common.add_run_args(p, quick="1 round, a 256 x 512 crop and batch 1")
    return p.parse_args(argv)


def build(args, device):
    cfg = common.compose_config([f"+experiment={args.experiment}", *args.overrides])
    torch.manual_seed(0)
    model = build_model_from_config(cfg, 19, pretrained=False).to(device).train()
    optimizer = build_optimizer(model, **cfg["optimizer"])
    scheduler = build_scheduler(optimizer, cfg["trainer"]["max_iters"], **cfg["scheduler"])
    crop = ([int(v) for v in args.crop.split(",")] if args.crop else [256, 512] if args.quick
            else cfg["dataset"]["crop_size"])
    batch_size = args.batch or (1 if args.quick else cfg["trainer"]["batch_size"])
    batch = {"image": torch.randn(batch_size, 3, *crop), "mask": torch.randint(0, 19, (batch_size, *crop))}
    return cfg, model, optimizer, scheduler, batch, crop, batch_size


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    args.rounds = args.rounds or (1 if args.quick else 3)
    out = common.results_dir(args.out, quick=args.quick, partial=bool(args.overrides or args.crop or args.batch
                                                                         or args.experiment != EXPERIMENT))
    cfg, model, optimizer, scheduler, batch, crop, batch_size = build(args, device)
    step = lambda: train_step(model, batch, optimizer, scheduler)  # noqa: E731
    step()  # the momentum buffers: a checkpoint of a running job holds them
    folder = tempfile.mkdtemp(prefix=".segattn_ckpt_bench_", dir=args.dir or os.getcwd())
    path = os.path.join(folder, "last.pt")

    def save():
        ckpt = {"model": model.state_dict(), "iter": 1, "config": cfg, "best": -1.0,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
        save_checkpoint(ckpt, path)

    try:
        save()
        cases = {"step": step, "save": save, "load": lambda: load_checkpoint(path)}
        times = common.time_interleaved(cases, args.rounds, args.warmup, device)
        size = os.path.getsize(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    step_s, save_s, load_s = times["step"], times["save"], times["load"]
    row = {"experiment": args.experiment, "crop": f"{crop[0]}x{crop[1]}", "batch": batch_size,
           "weights_mib": weights / common.MiB, "file_mib": size / common.MiB, "step_s": step_s, "save_s": save_s,
           "load_s": load_s, "save_per_step": save_s / step_s, "write_mib_s": size / common.MiB / save_s}
    tag = "" if device.type == "cpu" else "_cuda"
    paths = [common.write_csv(os.path.join(out, f"checkpoint{tag}.csv"), list(row),
                              [[v if isinstance(v, (str, int)) else round(v, 4) for v in row.values()]])]
    paths.append(common.write_atomic(os.path.join(out, f"checkpoint{tag}.md"), report(args, device, row)))
    for p in paths:
        print(f"wrote {os.path.relpath(p)}")
    return {"row": row, "paths": paths}


def report(args, device, r) -> str:
    every = [[f"every {n} iterations", f"{100 * r['save_s'] / (n * r['step_s'] + r['save_s']):.3f} %",
              f"{n} iterations ({fmt(n * r['step_s'] / 60, 1)} min at this step time)"] for n in EVERY_ITERS]
    every += [[f"every {m} min (`trainer.ckpt_interval_min={m}`)",
               f"{100 * r['save_s'] / (60 * m + r['save_s']):.3f} %", f"{m} min"] for m in EVERY_MIN]
    return "\n".join([
        f"# Checkpoint cost against a training step{' (quick)' if args.quick else ''}", "",
        f"Produced by `python benchmarks/checkpoint.py{' --quick' if args.quick else ''}` on: "
        f"{common.machine_line(device)}; median of {args.rounds} interleaved round(s) after {args.warmup} warm-up. "
        f"`+experiment={r['experiment']}` (its model and SGD with momentum, after one step), a "
        f"{r['crop']} crop, batch {r['batch']} per step; `last.pt` written as the trainer writes it (fsync, "
        f"rename) to a temporary folder in the working directory.", "",
        common.markdown_table(
            ["weights (MiB)", "last.pt (MiB)", "training step (s)", "save last.pt (s)", "load (s)", "save / step",
             "write MiB/s"],
            [[fmt(r["weights_mib"], 1), fmt(r["file_mib"], 1), fmt(r["step_s"], 3), fmt(r["save_s"], 3),
              fmt(r["load_s"], 3), f"{fmt(r['save_per_step'], 3)}x", fmt(r["write_mib_s"], 0)]], align="r" * 7), "",
        "What a checkpoint interval adds to the training time (one save per interval), and the most work a "
        "lost rank or a killed job can lose (one interval; a restart also pays one load and the start-up):", "",
        common.markdown_table(["checkpoint", "time added", "lost at most"], every, align="lrl"), ""])


def main(argv=None) -> dict:
    args = parse_args(argv)
    with common.threads(args.threads):
        return run(args)


if __name__ == "__main__":
    main()
