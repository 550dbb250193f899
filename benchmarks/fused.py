"""Fused against explicit attention: what computing attention without its HW x HW map costs.

    python benchmarks/fused.py                 # CPU, 1 x 512 x 97 x 97 -> results/fused.md, .csv
    python benchmarks/fused.py --quick         # 1 timing round, no DA head step -> results/quick/
    python benchmarks/fused.py --heads da      # some mechanisms -> results/partial/
    python benchmarks/fused.py --device cuda   # on the GPU -> results/fused_cuda.md, .csv

(``python benchmarks/heads.py --fused`` runs this too.) Everything is measured side by side in one
process, the timings interleaved round by round (the machine is shared; ratios, not seconds, are
what carries over):

1. Every mechanism with ``impl`` (conf/head/<name>.yaml hyper-parameters, 512 channels) fused and
   explicit: memory (meta device: inference peak, saved for backward, training peak), matrix-product
   FLOPs of the forward and of forward + backward (meta device, as benchmarks/common.py counts), the
   time of an eval forward and of a training forward + backward.
2. The attention kernel alone where the value is wider than the keys (DANet's PAM: keys 64, value
   512; OCNet's pyramid and ASP blocks: keys 256, value 512), over 97 x 97 positions: segattn's
   blocked kernel (each affinity computed once, ``segattn.ops.wide_value_attention``), the value cut
   into heads for the flash kernel (what ``fused`` ran before; traced graphs still do), and explicit.
3. DANet's decode head, one training step (forward, backward) at the recipe's widths on 97 x 97 c5
   features: segattn's ``da`` head against mmseg's ``DAHead`` as transcribed in tests/reference_mmseg.py
   (its PAM computes the HW x HW map).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import MiB, fmt  # noqa: E402
from segattn import ops  # noqa: E402

# The mechanisms with ``impl`` (fused attention / recomputing criss-cross vs the explicit maps).
FUSED = ["nl", "da", "oc", "oc_pyramid", "oc_asp", "mhsa", "cc"]
WIDE = ["da", "oc_pyramid", "oc_asp"]  # values wider than keys
KERNELS = {"DANet PAM (keys 64, value 512)": (64, 512), "OCNet (keys 256, value 512)": (256, 512)}
GOALS = {"flops": 1.05, "time": 1.0, "memory": 0.25, "head_step": 1.05}  # ratios to explicit / mmseg
CC_NL_MEMORY = 1 / 11  # CCNet's claim: 11x less memory than the non-local block


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=97, help="feature size S (S x S; 97 = 769x769 crops at output stride 8)")
    p.add_argument("--heads", default=None, help=f"comma-separated, of {','.join(FUSED)} (default: all)")
    common.add_run_args(p, quick="1 timing round, no DA head step")
    return p.parse_args(argv)


@contextlib.contextmanager
def head_split():
    """``fused_attention`` as before the blocked kernel: the value cut into heads for the flash kernel
    (what traced and exported graphs run)."""
    saved = ops._tracing
    ops._tracing = lambda: True
    try:
        yield
    finally:
        ops._tracing = saved


def _train_step(module, inputs):
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    for p in module.parameters():
        p.grad = None
    common._sum_outputs(module(*inputs)).backward()


def _flops(make_module, make_inputs, train: bool) -> int:
    """Matrix-product FLOPs of a forward (eval, no_grad) or a training forward + backward, on meta."""
    module = make_module().to("meta")
    inputs = make_inputs("meta")
    with common.cpu_emulation():
        if train:
            common.train_mode(module)
            return common.count_flops(lambda: _train_step(module, inputs)).matmul
        module.eval()
        with torch.no_grad():
            return common.count_flops(lambda: module(*inputs)).matmul


def mechanism_rows(names, size, device, cases) -> list[dict]:
    rows = []
    for name in names:
        row = {"mechanism": name}
        for impl in ("fused", "explicit"):
            def make(impl=impl):
                torch.manual_seed(0)
                return common.build_mechanism(name, 512, impl=impl)

            def inputs(dev):
                shape = (1, 512, size, size)
                return [torch.empty(shape, device=dev) if torch.device(dev).type == "meta" else torch.randn(shape, device=dev)]

            mem_device = "meta" if device.type == "cpu" else device
            mem = common.activation_memory(make(), lambda: inputs(mem_device), mem_device)
            row.update({f"{impl}_{k}_mib": v / MiB for k, v in mem.items()})
            row[f"{impl}_fwd_gflops"] = _flops(make, inputs, False) / 1e9
            row[f"{impl}_train_gflops"] = _flops(make, inputs, True) / 1e9
            m, x = make().to(device), inputs(device)
            cases[f"{name}/{impl}/fwd"] = lambda m=m, x=x: _no_grad(m.eval(), x)
            cases[f"{name}/{impl}/train"] = lambda m=m, x=x: _train_step(common.train_mode(m), x)
        rows.append(row)
    return rows


def _no_grad(module, inputs):
    with torch.no_grad():
        return module(*inputs)


def _explicit(q, k, v):
    return torch.bmm(torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1), v)


KERNEL_FORMS = {
    "blocked": lambda q, k, v: ops.fused_attention(q, k, v, 1.0),
    "head_split": lambda q, k, v: _in_head_split(q, k, v),
    "explicit": _explicit,
}


def _in_head_split(q, k, v):
    with head_split():
        return ops.fused_attention(q, k, v, 1.0)


def kernel_rows(size, device, cases) -> list[dict]:
    length, rows = size * size, []
    for label, (d, e) in KERNELS.items():
        row = {"kernel": label}
        for form, fn in KERNEL_FORMS.items():
            def make(dev, d=d, e=e):
                if torch.device(dev).type == "meta":
                    return [torch.empty(1, length, c, device=dev, requires_grad=True) for c in (d, d, e)]
                return [torch.randn(1, length, c, device=dev, requires_grad=True) for c in (d, d, e)]

            def step(tensors, fn=fn):
                fn(*tensors).sum().backward()

            def forward(tensors, fn=fn):
                with torch.no_grad():
                    fn(*tensors)

            with common.cpu_emulation():
                row[f"{form}_fwd_gflops"] = common.count_flops(lambda: forward(make("meta"))).matmul / 1e9
                row[f"{form}_train_gflops"] = common.count_flops(lambda: step(make("meta"))).matmul / 1e9
                mem_device = "meta" if device.type == "cpu" else device
                row[f"{form}_train_mib"] = common.peak_bytes(lambda: step(make(mem_device)), mem_device) / MiB
            real = make(device)
            cases[f"{label}/{form}"] = lambda real=real, step=step: step(real)
        rows.append(row)
    return rows


def da_head_cases(size, device, cases) -> None:
    """segattn's DA head and mmseg's DAHead (tests/reference_mmseg.py), the same widths and weights' shapes."""
    from tests import reference_mmseg as ref

    feats = common.stage_inputs(size, device)
    torch.manual_seed(0)
    ours = common.train_mode(common.build_decode_head("da", common.R101_CHANNELS, 19).to(device))
    torch.manual_seed(0)
    theirs = ref.DAHead(pam_channels=64, in_channels=2048, channels=512, num_classes=19, dropout_ratio=0.1)
    theirs = common.train_mode(theirs.to(device))
    cases["da head/segattn"] = lambda: _head_step(ours, feats)
    cases["da head/mmseg"] = lambda: _head_step(theirs, feats)


def _head_step(head, feats):
    for p in head.parameters():
        p.grad = None
    common._sum_outputs(head([f.detach() for f in feats])).backward()


def _r(a, b) -> float:
    return a / b if b else float("nan")


def _met(value, goal) -> str:
    return "yes" if value <= goal else "**no**"


def report(args, rows, kernels, times, device) -> list[str]:
    t = lambda key: times.get(key, float("nan"))  # noqa: E731
    lines = [f"# Fused vs explicit attention at {args.size}x{args.size} features (1 x 512 x {args.size} x {args.size})", "",
             f"Produced by `python benchmarks/fused.py{' --quick' if args.quick else ''}` on: "
             f"{common.machine_line(device)}; timings: median of {args.rounds} interleaved round(s) after "
             f"{args.warmup} warm-up.", "",
             "- Each registered module with the hyper-parameters of conf/head/<name>.yaml, `impl=fused` (the default: "
             "flash attention for nl/oc/mhsa, the blocked kernel that computes each affinity once where the value is "
             "wider than the keys (da, oc_pyramid, oc_asp), nl's `dot_product` by associativity, cc's pass as a "
             "custom autograd function that saves only its input) against `impl=explicit` (the maps as the papers "
             "write them).",
             "- Memory (MiB, meta device, with the kernel the CPU picks): **fwd** = inference peak; **train** = peak of "
             "forward + backward (BatchNorm frozen, parameter gradients included); **saved** = bytes autograd keeps.",
             "- GFLOPs: convolutions and matrix products (2 per multiply-accumulate), forward (eval) and forward + "
             "backward (train), counted on the meta device.", ""]
    lines.append(common.markdown_table(
        ["mechanism", "train MiB fused / explicit", "fwd MiB fused / explicit", "saved MiB fused / explicit",
         "fwd GFLOPs fused / explicit", "train GFLOPs fused / explicit", "fwd ms fused / explicit",
         "train ms fused / explicit"],
        [[r["mechanism"]] + [f"{fmt(r[f'fused_{k}'], 1)} / {fmt(r[f'explicit_{k}'], 1)}"
                             for k in ("train_mib", "fwd_mib", "saved_mib", "fwd_gflops", "train_gflops")]
         + [_ms_pair(t, r["mechanism"], p) for p in ("fwd", "train")] for r in rows], align="l" + "r" * 7))
    lines += [""] + wide_section(rows, kernels, t) + cc_section(rows, t)
    return lines


def _ms_pair(t, name: str, phase: str) -> str:
    return f"{fmt(1000 * t(f'{name}/fused/{phase}'), 0)} / {fmt(1000 * t(f'{name}/explicit/{phase}'), 0)}"


def wide_section(rows, kernels, t) -> list[str]:
    by = {r["mechanism"]: r for r in rows}
    lines = ["## Values wider than keys: each affinity once", "",
             f"Goals against the explicit form: forward FLOPs (as heads.md counts them) at most {GOALS['flops']}x, "
             f"forward + backward time at most {GOALS['time']}x, training peak memory at most {GOALS['memory']}x; the DA "
             f"head's training step within {GOALS['head_step']}x mmseg's. Training FLOPs are shown beside: the backward "
             "recomputes q k^T once per block instead of keeping the map (d / (3 (d + e)) more: 3.7 % for DANet's "
             "shape, 11 % for OCNet's).", ""]
    table = []
    for name in (n for n in WIDE if n in by):
        r = by[name]
        table.append([f"module `{name}`"] + _goal_cells(
            _r(r["fused_fwd_gflops"], r["explicit_fwd_gflops"]), _r(r["fused_train_gflops"], r["explicit_train_gflops"]),
            _r(t(f"{name}/fused/train"), t(f"{name}/explicit/train")), _r(r["fused_train_mib"], r["explicit_train_mib"]))
            + ["-"])
    for k in kernels:
        label = k["kernel"]
        split = (f"{fmt(_r(k['head_split_fwd_gflops'], k['explicit_fwd_gflops']), 2)}x fwd FLOPs, "
                 f"{fmt(_r(t(f'{label}/head_split'), t(f'{label}/explicit')), 2)}x time")
        table.append([f"kernel, {label}"] + _goal_cells(
            _r(k["blocked_fwd_gflops"], k["explicit_fwd_gflops"]), _r(k["blocked_train_gflops"], k["explicit_train_gflops"]),
            _r(t(f"{label}/blocked"), t(f"{label}/explicit")), _r(k["blocked_train_mib"], k["explicit_train_mib"])) + [split])
    ours, theirs = t("da head/segattn"), t("da head/mmseg")
    if ours == ours and theirs == theirs:  # both measured (not NaN)
        step = _r(ours, theirs)
        table.append(["DA head step vs mmseg's DAHead", "-", "-", f"{fmt(step, 2)}x ({_met(step, GOALS['head_step'])}; "
                      f"{fmt(ours, 2)} s vs {fmt(theirs, 2)} s)", "-", "-"])
    lines.append(common.markdown_table(["", "fwd FLOPs / explicit", "train FLOPs / explicit", "fwd + bwd time / explicit",
                                        "train peak / explicit", "value cut into heads (before)"], table, align="l" + "r" * 5))
    lines += ["", "The modules' ratios include their convolutions and normalisations, which fused and explicit share: "
              "pyramid-OC's (a 2048- and a 4096-channel map) and ASP-OC's (five branches on a map whose attention runs "
              "2x pooled, 48 x 48 positions) outweigh their attention maps, so their memory cannot fall to a quarter; "
              "the kernel rows isolate the attention.", ""]
    return lines


def _goal_cells(fwd_flops, train_flops, time, memory) -> list[str]:
    return [f"{fmt(fwd_flops, 3)}x ({_met(fwd_flops, GOALS['flops'])})", f"{fmt(train_flops, 3)}x",
            f"{fmt(time, 2)}x ({_met(time, GOALS['time'])})", f"{fmt(memory, 2)}x ({_met(memory, GOALS['memory'])})"]


def cc_section(rows, t) -> list[str]:
    by = {r["mechanism"]: r for r in rows}
    if "cc" not in by or "nl" not in by:
        return []
    cc, nl = by["cc"], by["nl"]
    ratio = cc["fused_train_mib"] / nl["explicit_train_mib"]
    return [
        "## CCNet's memory claim", "",
        f"Training peak (forward + backward): cc (fused, recurrence 2) {fmt(cc['fused_train_mib'], 1)} MiB "
        f"against the explicit non-local block's {fmt(nl['explicit_train_mib'], 1)} MiB: 1/"
        f"{fmt(1 / ratio, 1)} (target 1/{round(1 / CC_NL_MEMORY)}: {'met' if ratio <= CC_NL_MEMORY else 'not met'}); "
        f"explicit cc {fmt(cc['explicit_train_mib'], 1)} MiB (1/{fmt(nl['explicit_train_mib'] / cc['explicit_train_mib'], 1)}). "
        f"Against the fused non-local block ({fmt(nl['fused_train_mib'], 1)} MiB) the criss-cross module keeps "
        f"{fmt(cc['fused_train_mib'] / nl['fused_train_mib'], 2)}x its memory. Forward time, cc fused "
        f"{fmt(1000 * t('cc/fused/fwd'), 0)} ms vs explicit {fmt(1000 * t('cc/explicit/fwd'), 0)} ms.", ""]


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    names = common.parse_names(args.heads, FUSED)
    if "cc" in names and "nl" not in names:
        names.append("nl")  # the cc / nl ratio needs it
    args.rounds = args.rounds or (1 if args.quick else 3)
    full = not args.quick and args.heads is None and args.size == 97
    out = common.results_dir(args.out, quick=args.quick, partial=not full)
    cases: dict = {}
    rows = mechanism_rows(names, args.size, device, cases)
    kernels = kernel_rows(args.size, device, cases) if any(n in WIDE for n in names) else []
    if "da" in names and not args.quick:
        da_head_cases(args.size, device, cases)
    from tqdm import tqdm

    with tqdm(total=(args.warmup + args.rounds) * len(cases), desc="fused", dynamic_ncols=True) as bar:
        times = common.time_interleaved(cases, args.rounds, args.warmup, device, progress=bar)
    tag = "" if device.type == "cpu" else "_cuda"
    keys = ["train_mib", "fwd_mib", "saved_mib", "fwd_gflops", "train_gflops"]
    headers = ["mechanism"] + [f"{impl}_{k}" for k in keys for impl in ("fused", "explicit")]
    headers += [f"{impl}_{p}_ms" for p in ("fwd", "train") for impl in ("fused", "explicit")]
    csv_rows = [[r["mechanism"]] + [round(r[h], 3) for h in headers[1:1 + 2 * len(keys)]]
                + [round(1000 * times[f"{r['mechanism']}/{impl}/{p}"], 1) for p in ("fwd", "train") for impl in ("fused", "explicit")]
                for r in rows]
    paths = [common.write_csv(os.path.join(out, f"fused{tag}.csv"), headers, csv_rows)]
    paths.append(common.write_atomic(os.path.join(out, f"fused{tag}.md"), "\n".join(report(args, rows, kernels, times, device))))
    for p in paths:
        print(f"wrote {os.path.relpath(p)}")
    return {"rows": rows, "kernels": kernels, "times": times, "paths": paths}


def main(argv=None) -> dict:
    args = parse_args(argv)
    with common.threads(args.threads):
        return run(args)


if __name__ == "__main__":
    main()
