"""Training throughput on this machine: images/s, data-loading share, model FLOP utilisation.

    python benchmarks/train_speed.py            # -> results/train_speed.md, .csv
    python benchmarks/train_speed.py --quick    # fewer steps, no profile (a few minutes on 2 cores)

Two configurations, taking their steps in turn, run the trainer's own pieces (the Hydra config composed as train.py does,
``build_loaders``, the model, optimizer and schedule, one step = forward, loss, backward, SGD):

- ``default``: conf/train.yaml as shipped, ResNet-18-D8 + FCN, 128x128 crops, batch 8, the
  embedded dataset with its augmentation and ``trainer.num_workers`` loader processes;
- ``r50_<head>``: ResNet-50-D8 + a head (``--head``, default cc), 128x128 crops, batch 2.

For each: images/s over the timed steps; the share of step time spent waiting for the next batch
(what the training loop sees after the loader's prefetching); the pipeline's own cost per sample,
loaded in the main process; the model FLOPs of one step (forward + backward, counted on the
``meta`` device) per second of the fastest step, over the best rate of an fp32 matrix product
measured in the same process with the same threads, sampled before, after and between the steps
(the machine is shared and its free capacity drifts). A profile of two steps says where the time
goes.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import fmt  # noqa: E402

MFU_TARGET = 0.30
DATA_TARGET = 0.10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="default,r50", help="comma-separated: default, r50")
    p.add_argument("--head", default="cc", help="the head of the r50 configuration")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 8, --quick 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (worker start-up, allocator)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores, as train.py)")
    p.add_argument("--workers", type=int, default=None, help="override trainer.num_workers (default: the config's)")
    p.add_argument("--root", default=None, help="dataset.root (default: the config's, generated on first use)")
    p.add_argument("--dataset", default=None, help="dataset name override (e.g. cityscapes for a folder in that layout)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every configuration")
    p.add_argument("--peak-sizes", default="1024,2048,3072", help="square matmul sizes for the peak measurement")
    p.add_argument("--quick", action="store_true", help="3 timed steps, 1 warm-up, no profile")
    p.add_argument("--out", default=None, help="folder for the result files (default: results/, or results/quick/ "
                                               "or results/partial/ for a quick run or other configurations)")
    return p.parse_args(argv)


def configurations(args) -> list[tuple[str, str, list[str]]]:
    known = {
        "default": ("default", "ResNet-18-D8 + FCN, 128x128, batch 8 (conf/train.yaml)", []),
        "r50": (f"r50_{args.head}", f"ResNet-50-D8 + {args.head}, 128x128, batch 2",
                ["backbone=resnet50", f"head={args.head}", "dataset.crop_size=[128,128]", "trainer.batch_size=2"]),
    }
    names = common.parse_names(args.configs, list(known), "--configs")
    return [known[n] for n in names]


def step_flops(model: torch.nn.Module, batch: int, crop: list[int], num_classes: int) -> common.Flops:
    """FLOPs of forward + loss + backward for one batch, counted on a meta copy of the model."""
    meta = copy.deepcopy(model).to("meta").train()
    images = torch.empty(batch, 3, *crop, device="meta")
    masks = torch.zeros(batch, *crop, dtype=torch.long, device="meta")

    def step():
        outputs = meta(images)
        loss, _ = meta.loss({k: v.float() for k, v in outputs.items()}, masks)
        loss.backward()

    with common.cpu_emulation():
        return common.count_flops(step)


def setup_config(key: str, overrides: list[str], args) -> dict:
    """Everything one configuration needs for its steps: the trainer's loaders, model, optimizer."""
    from segattn.engine import trainer
    from segattn.engine.optim import build_optimizer, build_scheduler
    from segattn.models import build_model_from_config

    cfg = common.compose_config(overrides + list(args.overrides) + ["trainer.device=cpu"]
                                + ([f"trainer.num_workers={args.workers}"] if args.workers is not None else [])
                                + ([f"dataset={args.dataset}"] if args.dataset else [])
                                + ([f"dataset.root={args.root}"] if args.root else []))
    t = cfg["trainer"]
    torch.manual_seed(0)
    train_set, _, loader, _ = trainer.build_loaders(cfg, 0, 0)
    num_classes = len(train_set.classes)
    model = build_model_from_config(cfg, num_classes)
    model.train()
    optimizer = build_optimizer(model, **cfg["optimizer"])
    scheduler = build_scheduler(optimizer, int(t["max_iters"]), **cfg["scheduler"])

    def train_step(batch):  # the trainer's own step (looked up at each call, so a test can watch it)
        trainer.train_step(model, batch, optimizer, scheduler)

    return {"key": key, "cfg": cfg, "train_set": train_set, "model": model, "num_classes": num_classes,
            "batches": iter(loader), "train_step": train_step, "data_s": [], "step_s": [], "mm_rates": []}


def timed_step(st: dict, timed: bool, products: dict, n: int) -> None:
    """One training step of ``st``, then one matrix product of each kind (the peak, sampled through
    the same spells of the shared machine as the steps)."""
    tic = time.perf_counter()
    batch = next(st["batches"])
    got = time.perf_counter()
    st["train_step"](batch)
    done = time.perf_counter()
    for product in products.values():
        t0 = time.perf_counter()
        product()
        if timed:
            st["mm_rates"].append(2 * n**3 / (time.perf_counter() - t0))
    if timed:
        st["data_s"].append(got - tic)
        st["step_s"].append(done - tic)


def finish_config(st: dict, args, progress) -> dict:
    """Profile, the pipeline's own cost, the FLOPs of a step; the configuration's result row."""
    key, cfg, model = st["key"], st["cfg"], st["model"]
    t = cfg["trainer"]
    batch_size, crop = int(t["batch_size"]), [int(c) for c in cfg["dataset"]["crop_size"]]
    profile = None
    if not args.quick:
        progress.set_postfix_str(f"{key} profile")
        from torch.profiler import ProfilerActivity, profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                st["train_step"](next(st["batches"]))
        profile = prof.key_averages()
        progress.update(1)
    st["batches"] = None  # stops the loader's worker processes

    # The pipeline's own cost: samples loaded and augmented in this process, one at a time.
    progress.set_postfix_str(f"{key} loader")
    train_set = st["train_set"]
    n_samples = 4 if args.quick else 16
    tic = time.perf_counter()
    for k in range(n_samples):
        train_set[(k % len(train_set), 1000 + k)]
    per_sample = (time.perf_counter() - tic) / n_samples
    progress.update(1)

    flops = step_flops(model, batch_size, crop, st["num_classes"])
    step_s, data_s = st["step_s"], st["data_s"]
    return {
        "key": key, "backbone": cfg["backbone"]["name"], "head": cfg["head"]["name"], "batch": batch_size,
        "crop": crop, "workers": int(t.get("num_workers", 0)), "steps": len(step_s),
        "images_per_s": batch_size * len(step_s) / sum(step_s), "step_median_s": statistics.median(step_s),
        "data_median_s": statistics.median(data_s), "data_share": sum(data_s) / sum(step_s),
        "sample_load_s": per_sample, "step_flops": flops.matmul, "step_other_flops": flops.other,
        "best_step_s": min(step_s), "model_flops_per_s": flops.matmul / min(step_s), "mm_rates": st["mm_rates"],
        "flops_by_op": flops.matmul_by_op, "profile": profile,
    }


# Profiler op names -> what they are, for the summary of where a step's time goes.
CATEGORIES = [
    ("convolution forward", ("mkldnn_convolution", "_convolution", "thnn_conv", "_slow_conv2d_forward")),
    ("convolution backward", ("convolution_backward", "mkldnn_convolution_backward", "slow_conv2d_backward")),
    ("matrix products", ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm")),
    ("batch norm", ("batch_norm",)),
    ("element-wise (relu, add, mul, ...)", ("relu", "threshold", "aten::add", "aten::mul", "aten::div", "aten::sub",
                                             "sigmoid", "aten::where", "masked_fill", "fill_", "zero_")),
    ("resize / softmax / loss", ("upsample", "softmax", "nll_loss", "log_softmax", "cross_entropy")),
    ("optimizer", ("_foreach", "sgd", "addcmul", "lerp")),
    ("memory copies", ("copy_", "aten::cat", "clone", "contiguous", "empty")),
]


def profile_summary(profile, top: int = 12) -> tuple[list[list], list[list], dict[str, float]]:
    """(time share per category, the top ops, seconds per step per category)."""
    events = [e for e in profile if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    by_cat = {c: 0.0 for c, _ in CATEGORIES}
    other = 0.0
    for e in events:
        for cat, keys in CATEGORIES:
            if any(k in e.key for k in keys):
                by_cat[cat] += e.self_cpu_time_total
                break
        else:
            other += e.self_cpu_time_total
    cats = [[c, fmt(100 * v / total, 1)] for c, v in sorted(by_cat.items(), key=lambda kv: -kv[1]) if v > 0]
    cats.append(["everything else", fmt(100 * other / total, 1)])
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    rows = [[f"`{e.key}`", e.count, fmt(e.self_cpu_time_total / 1e3 / 2, 0), fmt(100 * e.self_cpu_time_total / total, 1)]
            for e in ops]
    seconds = {c: v / 1e6 / 2 for c, v in by_cat.items()}  # profiled over 2 steps, times in microseconds
    return cats, rows, seconds


def why(r: dict, seconds: dict[str, float], peak: float) -> list[str]:
    """The utilisation explained from the profile: how fast the convolutions themselves run, and how
    much of the step is work with (almost) no FLOPs in the count."""
    fwd = sum(v for k, v in r["flops_by_op"].items() if k.endswith("convolution"))
    bwd = sum(v for k, v in r["flops_by_op"].items() if k.endswith("convolution_backward"))
    t_fwd, t_bwd = seconds["convolution forward"], seconds["convolution backward"]
    total = sum(seconds.values())
    if not (t_fwd and t_bwd and total):
        return []
    light = sum(v for k, v in seconds.items() if not k.startswith("convolution") and k != "matrix products")
    rate_f, rate_b = fwd / t_fwd, bwd / t_bwd
    return [f"In this profile the convolutions run at {fmt(rate_f / 1e9, 0)} GFLOP/s forward and "
            f"{fmt(rate_b / 1e9, 0)} GFLOP/s backward ({fmt(100 * rate_f / peak, 0)} % and "
            f"{fmt(100 * rate_b / peak, 0)} % of the matmul peak; profiled steps are not the fastest ones), and "
            f"{fmt(100 * light / total, 0)} % of the step goes to memory-bound work that the FLOP count hardly "
            "sees (batch norm, ReLU and residual additions, resizing, the loss, the optimizer). The utilisation is "
            "about the convolutions' share of the step times their efficiency.", ""]


def write_results(results: list[dict], peak: float, args) -> list[str]:
    partial = (args.configs != "default,r50" or args.head != "cc" or args.overrides or args.root or args.dataset
               or args.workers is not None or args.steps is not None)
    out = common.results_dir(args.out, quick=args.quick, partial=bool(partial))
    os.makedirs(out, exist_ok=True)
    md_path = os.path.join(out, "train_speed.md")
    csv_path = os.path.join(out, "train_speed.csv")
    rows = []
    for r in results:
        mfu = r["model_flops_per_s"] / peak
        rows.append([r["key"], f"{r['backbone']} + {r['head']}", f"{r['crop'][0]}x{r['crop'][1]}", r["batch"],
                     r["workers"], fmt(r["images_per_s"], 2), fmt(r["step_median_s"] * 1e3, 0),
                     fmt(r["data_median_s"] * 1e3, 1), f"{fmt(100 * r['data_share'], 1)} %",
                     fmt(r["sample_load_s"] * 1e3, 1), fmt(r["step_flops"] / 1e9, 1),
                     fmt(r["best_step_s"] * 1e3, 0), fmt(r["model_flops_per_s"] / 1e9, 1), f"{fmt(100 * mfu, 0)} %"])
    lines = [
        "# Training speed on the CPU",
        "",
        f"Produced by `python benchmarks/train_speed.py{' --quick' if args.quick else ''}` on: "
        f"{common.machine_line('cpu')}. Matrix-multiply peak of the machine in this run: "
        f"**{fmt(peak / 1e9, 1)} GFLOP/s** (fp32 square products, as `torch.mm` (MKL) and as a 1x1 convolution "
        f"(oneDNN, which runs the model's convolutions): the best of sizes {'/'.join(map(str, args.peak_sizes))} "
        f"before and after the runs, median of 5 each, and of one {min(2048, max(args.peak_sizes))}^2 product of "
        "each kind after every training step).",
        "",
        "Each configuration runs the trainer's pieces (Hydra config as train.py composes it, `build_loaders`, "
        f"model, SGD + poly schedule): {args.warmup} untimed steps, then {args.steps} timed ones. **data wait** is "
        "the time the loop waits for the next batch (after the loader's prefetching), **load/sample** the "
        "pipeline's own cost (read PNGs, random scale, crop, flip, colour jitter, normalise) for one sample in the "
        "main process, **GFLOPs/step** the convolutions and matrix products of forward + backward (2 per "
        "multiply-accumulate), **GFLOP/s** their rate in the fastest step and **MFU** that rate over the "
        "matmul peak. The machine is shared and its free capacity swings by several times within seconds, so the "
        "peak is sampled through the same spells as the steps (one product after every step, besides the "
        "measurements before and after) and the best of each is compared: the fastest step and the fastest product "
        "are the two measurements least disturbed by other processes. Medians and per-run numbers are in the CSV.",
        "",
        common.markdown_table(["config", "model", "crop", "batch", "workers", "images/s", "step ms", "data wait ms",
                               "data share", "load/sample ms", "GFLOPs/step", "best step ms", "GFLOP/s", "MFU"],
                              rows, align="lllrrrrrrrrrrr"),
        "",
        "## Targets",
        "",
    ]
    targets = []
    for r in results:
        mfu = r["model_flops_per_s"] / peak
        targets.append([f"{r['key']}: data loading share of a step", f"< {int(DATA_TARGET * 100)} %",
                        f"{fmt(100 * r['data_share'], 1)} %", "yes" if r["data_share"] < DATA_TARGET else "no"])
        targets.append([f"{r['key']}: model FLOP utilisation", f">= {int(MFU_TARGET * 100)} %",
                        f"{fmt(100 * mfu, 0)} %", "yes" if mfu >= MFU_TARGET else "no"])
    lines += [common.markdown_table(["target", "limit", "measured", "met"], targets, align="llrl"), ""]
    for r in results:
        budget = r["step_median_s"] / r["batch"]
        lines += [f"- `{r['key']}`: a sample costs the pipeline {fmt(r['sample_load_s'] * 1e3, 0)} ms of one core; the "
                  f"model consumes one every {fmt(budget * 1e3, 0)} ms, so loading needs "
                  f"{fmt(100 * r['sample_load_s'] / budget, 1)} % of one core's time, spread over "
                  f"{r['workers']} worker process(es) that share the machine's cores with the training threads."]
    lines.append("")
    for r in results:
        if r["profile"] is None:
            continue
        cats, ops, seconds = profile_summary(r["profile"])
        lines += [f"## Where a `{r['key']}` step goes (torch.profiler, 2 steps, self CPU time)", "",
                  common.markdown_table(["category", "% of step"], cats), "",
                  common.markdown_table(["op", "calls", "ms per step", "%"], ops), ""]
        lines += why(r, seconds, peak)
    common.write_atomic(md_path, "\n".join(lines))
    common.write_csv(csv_path, ["config", "backbone", "head", "crop_h", "crop_w", "batch", "workers", "steps",
                                "images_per_s", "step_median_s", "data_median_s", "data_share", "sample_load_s",
                                "step_flops", "step_other_flops", "best_step_s", "model_flops_per_s",
                                "matmul_median_during_steps", "matmul_peak_flops_per_s", "mfu", "mfu_median_step"],
                     [[r["key"], r["backbone"], r["head"], r["crop"][0], r["crop"][1], r["batch"], r["workers"],
                       r["steps"], r["images_per_s"], r["step_median_s"], r["data_median_s"], r["data_share"],
                       r["sample_load_s"], r["step_flops"], r["step_other_flops"], r["best_step_s"],
                       r["model_flops_per_s"], statistics.median(r["mm_rates"]), peak, r["model_flops_per_s"] / peak,
                       r["step_flops"] / r["step_median_s"] / statistics.median(r["mm_rates"])] for r in results])
    return [md_path, csv_path]


def main(argv=None) -> dict:
    args = parse_args(argv)
    with common.threads(args.threads):
        return run(args)


def run(args) -> dict:
    if args.steps is None:
        args.steps = 3 if args.quick else 8
    try:
        args.peak_sizes = [int(v) for v in str(args.peak_sizes).split(",")]
    except ValueError:
        raise SystemExit(f"--peak-sizes must be comma-separated integers, got {args.peak_sizes!r}") from None
    if args.quick:
        args.warmup = min(args.warmup, 1)
    configs = configurations(args)
    from tqdm import tqdm

    per_config = args.warmup + args.steps + 1 + (0 if args.quick else 1)
    progress = tqdm(total=2 + per_config * len(configs), desc="train speed", dynamic_ncols=True)
    progress.set_postfix_str("matmul peak")
    peaks = [common.matmul_peak(sizes=args.peak_sizes)]
    progress.update(1)
    # The configurations take their steps in turn, so that a busy spell of the shared machine falls
    # on all of them rather than on whichever happened to run then.
    states = [setup_config(key, overrides, args) for key, _, overrides in configs]
    n = min(2048, max(args.peak_sizes))
    products = common.matmul_cases(n)
    for product in products.values():
        product()
    for i in range(args.warmup + args.steps):
        for st in states:
            progress.set_postfix_str(f"{st['key']} step {i + 1}")
            timed_step(st, i >= args.warmup, products, n)
            progress.update(1)
    results = [finish_config(st, args, progress) for st in states]
    progress.set_postfix_str("matmul peak")
    peaks.append(common.matmul_peak(sizes=args.peak_sizes))
    progress.update(1)
    progress.close()
    # The best product of the run: a busy spell only ever lowers a measurement.
    peak = max(peaks + [max(r["mm_rates"]) for r in results])
    paths = write_results(results, peak, args)
    for p in paths:
        print(f"wrote {os.path.relpath(p)}")
    return {"results": results, "peak": peak, "paths": paths}


if __name__ == "__main__":
    main()
