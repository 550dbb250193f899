"""What each head costs at the paper setting: parameters, FLOPs, activation memory, latency.

    python benchmarks/heads.py                  # CPU, 97x97 R101-D8 features (769x769 crops) -> results/heads.md, .csv
    python benchmarks/heads.py --quick          # 2 timing rounds, no timm peers (a few minutes on 2 cores)
    python benchmarks/heads.py --device cuda    # measured on the GPU -> results/heads_cuda.md, .csv
    python benchmarks/heads.py --size 65        # 65x65 features (513x513 crops) -> results/heads_s65.md, .csv
    python benchmarks/heads.py --fused          # fused vs explicit attention: benchmarks/fused.py

A ``--quick`` run writes results/quick/, a run of some ``--heads`` results/partial/: only a full run
replaces the committed results.

Two levels are measured for every name of ``train.py head=<name>`` (hyper-parameters from
conf/head/<name>.yaml):

- the decode head as the trainer builds it, on ResNet-101-D8 stage outputs (c5: 2048 x S x S)
  for 19 classes: parameters, forward FLOPs, activation memory;
- the registered attention module alone (the mechanism, what the papers compare), on a
  1 x 512 x S x S input: parameters, forward FLOPs, activation memory and forward latency, next
  to timm's module for the mechanisms timm also implements (se, eca, cbam, sk, gc, nl) when timm
  is installed (``pip install timm``).

On the CPU, FLOPs and memory are measured on the ``meta`` device (exact shapes and bytes, no
compute; see benchmarks/common.py); latency is measured on real tensors with the modules in eval
mode. EMA is measured in eval mode too: in training it also moves its bases (a C x K update,
negligible) and all-reduces them under torch.distributed, which a single-process benchmark
cannot represent.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import MiB, fmt  # noqa: E402

# registry name -> (timm.layers class, kwargs matching conf/head/<name>.yaml).
TIMM_PEERS = {
    "se": ("SEModule", dict(rd_ratio=1 / 16)),
    "eca": ("EcaModule", dict(gamma=2, beta=1)),
    # (timm's MLP has no biases, ours has; 2 x 544 additions on pooled vectors, nothing to time.)
    "cbam": ("CbamModule", dict(rd_ratio=1 / 16, spatial_kernel_size=7)),
    # Our SK feeds the whole input to each branch (the paper); timm splits it by default.
    "sk": ("SelectiveKernel", dict(kernel_size=[3, 5], groups=32, rd_ratio=1 / 16, split_input=False)),
    "gc": ("GlobalContext", dict(use_attn=True, fuse_add=True, fuse_scale=False, rd_ratio=1 / 4, init_last_zero=True)),
    "nl": ("NonLocalAttn", dict(use_scale=True, rd_ratio=1 / 2)),
}
PEER_LIMIT = 1.2  # our forward within 1.2x of timm's
TARGETS = {"flops": 0.17, "memory": 1 / 5, "time": 0.5}  # cc / explicit nl at 1 x 512 x 97 x 97
REFERENCES = ["nl", "cc"]  # also measured with impl=explicit when both are in the run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=97, help="feature size S (S x S; 97 = 769x769 crops at output stride 8)")
    p.add_argument("--heads", default=None, help="comma-separated names (default: fcn and every registered head)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine a second OpenMP thread makes every "
                        "parallel region wait for a descheduled partner, which swamps the differences measured)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (median reported; default 5, --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--quick", action="store_true", help="2 timing rounds, no timm peers")
    p.add_argument("--head-latency", action="store_true", help="also time the whole decode heads (default on CUDA)")
    p.add_argument("--fused", action="store_true",
                   help="only compare head.impl=fused with impl=explicit (benchmarks/fused.py)")
    p.add_argument("--out", default=None, help="folder for the result files (default: results/, or results/quick/ "
                                               "or results/partial/ for a quick run or some heads)")
    return p.parse_args(argv)


def stage_inputs(size: int, device, batch: int = 1) -> list[torch.Tensor]:
    """R101-D8 stage outputs for an S x S c5: c2 at stride 4 is (2S - 1) x (2S - 1)."""
    c2 = 2 * (size - 1) + 1
    shapes = [(batch, common.R101_CHANNELS[0], c2, c2)] + [(batch, c, size, size) for c in common.R101_CHANNELS[1:]]
    return [torch.randn(s, device=device) if torch.device(device).type != "meta" else torch.empty(s, device=device)
            for s in shapes]


def build_pair(name: str, device) -> tuple[torch.nn.Module, torch.nn.Module | None, int]:
    """(decode head, registered mechanism or None for fcn, the mechanism's channels), both from
    conf/head/<name>.yaml alone: no hyper-parameter depends on the feature size (PSA's 97x97 mask
    serves every map; its logits beyond the mask's reach are 0, as in the official psamask). The
    mechanism gets the width it works at inside the head (``attention_channels``, else ``channels``)."""
    torch.manual_seed(0)
    head = common.build_decode_head(name, common.R101_CHANNELS, 19).to(device)
    cfg = common.head_config(name)
    channels = int(cfg.get("attention_channels") or cfg.get("channels", 512))
    mech = None if name == "fcn" else common.build_mechanism(name, channels).to(device)
    return head, mech, channels


def build_reference(name: str, impl: str, device) -> tuple[torch.nn.Module, int]:
    """The registered mechanism ``name`` as build_pair makes it, but with ``impl=<impl>``."""
    torch.manual_seed(0)
    cfg = common.head_config(name)
    channels = int(cfg.get("attention_channels") or cfg.get("channels", 512))
    return common.build_mechanism(name, channels, impl=impl).to(device), channels


def static_costs(name: str, size: int, device, impl: str | None = None) -> dict:
    """Parameters, forward FLOPs and memory of the head and of its mechanism. With ``impl`` only the
    mechanism, built with that ``impl=`` instead of its config's (the explicit references)."""
    measure_dev = torch.device("meta") if torch.device(device).type == "cpu" else torch.device(device)
    if impl is None:
        head, mech, channels = build_pair(name, measure_dev)
        row = {"name": name, "channels": channels, "head_params": common.count_params(head)}
        feats = stage_inputs(size, measure_dev)
        head.eval()
        with common.cpu_emulation(), torch.no_grad():
            f = common.count_flops(lambda: head(feats))
        row.update(head_flops=f.matmul, head_other=f.other)
        mem = common.activation_memory(head, lambda: [stage_inputs(size, measure_dev)], measure_dev)
        row.update({f"head_{k}": v for k, v in mem.items()})
    else:
        mech, channels = build_reference(name, impl, measure_dev)
        row = {"name": name, "impl": impl, "channels": channels}
    if mech is not None:
        x_shape = (1, channels, size, size)
        make = (lambda: [torch.empty(x_shape, device=measure_dev)]) if measure_dev.type == "meta" else \
            (lambda: [torch.randn(x_shape, device=measure_dev)])
        mech.eval()
        x = make()[0]
        with common.cpu_emulation(), torch.no_grad():
            f = common.count_flops(lambda: mech(x))
        row.update(mech_params=common.count_params(mech), mech_flops=f.matmul, mech_other=f.other,
                   mech_moved=f.moved, mech_other_ops=";".join(f"{k}:{v}" for k, v in f.other_by_op.items()),
                   mech_uncounted=";".join(f"{k}:{v}" for k, v in f.uncounted.items()))
        mem = common.activation_memory(mech, make, measure_dev)
        row.update({f"mech_{k}": v for k, v in mem.items()})
    return row


def timm_peer(name: str, channels: int):
    """timm's module for ``name`` (or None when timm is absent or has no such mechanism)."""
    try:
        import timm.layers as layers
    except ImportError:
        return None
    if name not in TIMM_PEERS:
        return None
    cls_name, kwargs = TIMM_PEERS[name]
    try:
        return getattr(layers, cls_name)(channels, **kwargs)
    except (AttributeError, TypeError) as e:  # another timm version: report, do not stop the benchmark
        print(f"timm peer for {name!r} not built ({cls_name}: {e}); its columns stay empty", file=sys.stderr)
        return None


def latencies(names: list[str], size: int, device, rounds: int, warmup: int, peers: bool, heads: bool,
              progress, references: list[tuple[str, str]] = ()) -> dict[str, float]:
    """Median forward seconds of every mechanism (``<name>``), timm peer (``timm:<name>``), reference
    (``<impl>:<name>`` for each (name, impl) of ``references``) and, with ``heads``, decode head
    (``head:<name>``), all timed in the same interleaved rounds."""
    device = torch.device(device)
    cases = {}
    x = {}
    feats = stage_inputs(size, device) if heads else None
    for name in names:
        head, mech, channels = build_pair(name, device)
        if channels not in x:
            x[channels] = torch.randn(1, channels, size, size, device=device)
        inp = x[channels]
        if mech is not None:
            mech.eval()
            cases[name] = (lambda m=mech, i=inp: _no_grad(m, i))
            peer = timm_peer(name, channels) if peers else None
            if peer is not None:
                peer.to(device).eval()
                cases[f"timm:{name}"] = (lambda m=peer, i=inp: _no_grad(m, i))
        if heads:
            head.eval()
            cases[f"head:{name}"] = (lambda m=head: _no_grad(m, feats))
    for name, impl in references:
        mech, channels = build_reference(name, impl, device)
        if channels not in x:
            x[channels] = torch.randn(1, channels, size, size, device=device)
        mech.eval()
        cases[f"{impl}:{name}"] = (lambda m=mech, i=x[channels]: _no_grad(m, i))
    if progress is not None:
        progress.total = (progress.total or 0) + (rounds + warmup) * len(cases)
        progress.refresh()
    return common.time_interleaved(cases, rounds=rounds, warmup=warmup, device=device, progress=progress)


def _no_grad(module, x):
    with torch.no_grad():
        return module(x)


def paper_setting_macs(size: int = 65) -> dict[str, float]:
    """GMACs of EMANet's and PSANet's heads as the EMANet table (513x513, R101-D8: 65x65 c5) counts
    them, and of our heads at that size; multiply-accumulates, as the papers of that time counted."""
    from segattn.models.attention import build_attention
    from segattn.models.attention.psa import shrunk_grid
    from segattn.models.layers import conv_bn_relu

    meta = torch.device("meta")
    c5 = torch.empty(1, 2048, size, size, device=meta)
    out = {}

    def macs(fn):
        with common.cpu_emulation(), torch.no_grad():
            return common.count_flops(fn).macs / 1e9

    # Official EMANet: fc0 = ConvBNReLU(2048, 512, 3), then EMAU(512, 64).
    fc0 = conv_bn_relu(2048, 512).to(meta).eval()
    emau = build_attention("ema", 512, num_bases=64, stages=3).to(meta).eval()
    out["ema_fc0"] = macs(lambda: fc0(c5))
    out["ema_emau"] = macs(lambda: emau(fc0(c5))) - out["ema_fc0"]
    # Official PSANet (hszhao/semseg) at this crop: PSA(2048, reduction 512, shrink 2) with the mask
    # that exactly covers the shrunk grid (2 * 33 - 1 = 65 at 65x65) and an unpadded projection; its
    # context (``fuse=False``: no 1x1 fuse conv) is concatenated with c5 and the head goes on with a
    # 3x3 conv 4096 -> 512, PSAHead's ``bottleneck``.
    grid = shrunk_grid(size, size, 2)[0]
    psa = build_attention("psa", 2048, inner_channels=512, mask_size=2 * grid - 1, fuse=False).to(meta).eval()
    out["psa_mask"] = 2 * grid - 1
    out["psa_module"] = macs(lambda: psa.context(c5))
    cat = torch.empty(1, 4096, size, size, device=meta)
    feats = stage_inputs(size, meta)
    for name in ("ema", "psa"):
        head = common.build_decode_head(name, common.R101_CHANNELS, 21).to(meta).eval()
        out[f"{name}_head"] = macs(lambda: head(feats))
        if name == "psa":
            # Our psa decode head is PSANet's head: its module (the recipe's mask, mmseg's padded
            # projection), the bottleneck, the classifier.
            out["psa_head_module"] = macs(lambda: head.attention.context(c5))
            out["psa_bottleneck"] = macs(lambda: head.bottleneck(cat))
    return out


def _ratio(a, b):
    return a / b if a is not None and b else float("nan")


def results_table(rows: list[dict], times: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    """The markdown table's headers and rows (timm and whole-head columns where they were measured)."""
    have_peers = any(k.startswith("timm:") for k in times)
    have_heads = any(k.startswith("head:") for k in times)
    unit = "ms"
    headers = ["head", "params", "mmseg params", "head GFLOPs", "head fwd MiB", "head train MiB",
               "mech. params (M)", "mech. GFLOPs", "of which other", "mech. fwd MiB", "mech. saved MiB",
               "mech. train MiB", f"mech. fwd {unit}"]
    if have_peers:
        headers += [f"timm fwd {unit}", "ours / timm"]
    if have_heads:
        headers += [f"head fwd {unit}"]
    table = []
    for r in rows:
        n = r["name"]
        mech = "mech_flops" in r
        row = [n, f"{r['head_params']:,}", mmseg_cell(n, r["head_params"]),
               fmt((r["head_flops"] + r["head_other"]) / 1e9, 1),
               fmt(r["head_fwd"] / MiB, 0), fmt(r["head_train"] / MiB, 0),
               fmt(r["mech_params"] / 1e6, 3) if mech else "—",
               fmt((r["mech_flops"] + r["mech_other"]) / 1e9) if mech else "—",
               fmt(r["mech_other"] / 1e9, 3) if mech else "—",
               fmt(r["mech_fwd"] / MiB, 1) if mech else "—", fmt(r["mech_saved"] / MiB, 1) if mech else "—",
               fmt(r["mech_train"] / MiB, 1) if mech else "—",
               fmt(times[n] * 1e3, 1) if n in times else "—"]
        if have_peers:
            peer = times.get(f"timm:{n}")
            row += [fmt(peer * 1e3, 1) if peer else "—", fmt(times[n] / peer) if peer and n in times else "—"]
        if have_heads:
            row += [fmt(times[f"head:{n}"] * 1e3, 0) if f"head:{n}" in times else "—"]
        table.append(row)
    return headers, table


def results_csv(rows: list[dict], times: dict[str, float]) -> tuple[list[str], list[list]]:
    """The CSV's headers and rows: every measurement unrounded."""
    csv_headers = ["head", "head_params", "mmseg_params", "head_flops", "head_other_flops", "head_fwd_bytes",
                   "head_saved_bytes", "head_train_bytes", "mech_channels", "mech_params", "mech_flops",
                   "mech_other_flops", "mech_moved_elements", "mech_fwd_bytes", "mech_saved_bytes", "mech_train_bytes",
                   "mech_fwd_s", "timm_fwd_s", "head_fwd_s", "mech_other_ops", "mech_uncounted_ops"]
    csv_rows = [[r["name"], r["head_params"], common.mmseg_params(r["name"]) or "", r["head_flops"], r["head_other"],
                 r["head_fwd"], r["head_saved"], r["head_train"], r["channels"] if "mech_flops" in r else "",
                 r.get("mech_params", ""), r.get("mech_flops", ""), r.get("mech_other", ""), r.get("mech_moved", ""),
                 r.get("mech_fwd", ""), r.get("mech_saved", ""), r.get("mech_train", ""), times.get(r["name"], ""),
                 times.get(f"timm:{r['name']}", ""), times.get(f"head:{r['name']}", ""),
                 r.get("mech_other_ops", ""), r.get("mech_uncounted", "")] for r in rows]
    return csv_headers, csv_rows


def results_intro(rows: list[dict], args, device: torch.device) -> list[str]:
    """The title, how it was produced, and what each column means."""
    s = args.size
    crop = 8 * (s - 1) + 1
    widths = sorted({r["channels"] for r in rows if "mech_flops" in r})
    mech_width = " or ".join(map(str, widths)) or "512"
    psa_mask = "x".join(str(m) for m in common.head_config("psa")["mask_size"])
    mem_how = ("measured with `torch.cuda.max_memory_allocated`" if device.type == "cuda" else
               "counted on the `meta` device by following every storage created and freed (the bytes a "
               "CPU run allocates, checked against one in tests/test_benchmarks.py)")
    time_how = ("CUDA events" if device.type == "cuda" else f"`time.perf_counter`, {args.threads} threads")
    return [
        f"# Head costs at {s}x{s} features ({crop}x{crop} crops, ResNet-101-D8){' on CUDA' if device.type == 'cuda' else ''}",
        "",
        f"Produced by `python benchmarks/heads.py{' --device ' + args.args_device if device.type == 'cuda' else ''}"
        f"{'' if s == 97 else f' --size {s}'}{' --quick' if args.quick else ''}` on: {common.machine_line(device)}.",
        "",
        "- **head**: the decode head as `train.py head=<name>` builds it (conf/head/<name>.yaml), on R101-D8 stage "
        f"outputs (c5 = 1 x 2048 x {s} x {s}) for 19 classes, with the same hyper-parameters at every size (PSA's "
        f"{psa_mask} mask included: beyond its reach the attention logits are 0, as in the official psamask). "
        "**params**: its exact parameter count; **mmseg params**: the decode head of mmsegmentation's Cityscapes "
        "R50-D8 recipe (19 classes, no auxiliary head) where mmseg has the head, ✓ where the two are the same "
        "integer. "
        f"{mmseg_note(rows)}",
        f"- **mech.**: the registered attention module alone on 1 x {mech_width} x {s} x {s} (what the papers "
        "compare), at the width it works at inside the head (`ema`: the EM unit at `attention_channels` 512; the "
        "head goes on at 256). `psa` alone is the registry's C -> C form (branches reduced to C/2, a 1x1 conv "
        "fusing input and context back to C); inside the head the same module runs on c5 itself (2048 channels, "
        "branches 512, no fuse conv: PSANet's 4096 -> 512 3x3 conv follows). `fcn` has no mechanism. "
        f"{impl_note(rows)}",
        "- **GFLOPs**: forward, 2 FLOPs per multiply-accumulate, convolutions and matrix products counted by "
        "`torch.utils.flop_counter.FlopCounterMode`; **of which other** is what it does not see, counted by "
        "`benchmarks/common.py` (softmax 5/element, BatchNorm/LayerNorm/GroupNorm, pooling, bilinear resizing "
        "7/output element, reductions, every element-wise op 1/element; CPU flash attention with the same formula "
        "as the CUDA kernels). Gathers, concatenations and copies are 0 FLOPs; their volume is the "
        "`mech_moved_elements` column of the CSV (PSA's mask gather: an HW x HW map per branch at the shrunk size).",
        f"- **Memory** (MiB), {mem_how}: **fwd** = peak of an inference forward (eval, no_grad); **saved** = "
        "bytes autograd keeps for backward (each storage once, parameters and input excluded); **train** = peak of "
        "forward + backward with the input requiring grad (dropout on, BatchNorm statistics frozen because a "
        "batch of one cannot train them), including the parameter gradients the backward creates.",
        f"- **Latency**: forward in eval mode under no_grad, batch 1, median of {args.rounds} rounds after "
        f"{args.warmup} warm-up; every module runs once per round in a rotating order, so a slow spell of a "
        f"shared machine hits all of them alike ({time_how}). EMA is timed in eval mode: in training it also "
        "moves its bases (a 512 x 64 update) and all-reduces them under torch.distributed.",
        "",
    ]


def write_results(rows: list[dict], times: dict[str, float], args, extras: dict | None) -> list[str]:
    device = torch.device(args.device)
    suffix = ("_cuda" if device.type == "cuda" else "") + ("" if args.size == 97 else f"_s{args.size}")
    out = common.results_dir(args.out, quick=args.quick, partial=args.heads is not None)
    os.makedirs(out, exist_ok=True)
    md_path = os.path.join(out, f"heads{suffix}.md")
    csv_path = os.path.join(out, f"heads{suffix}.csv")
    have_peers = any(k.startswith("timm:") for k in times)
    lines = results_intro(rows, args, device) + [common.markdown_table(*results_table(rows, times)), ""]
    if not have_peers:
        lines += ["timm peer columns are left out: " + ("`--quick` run." if args.quick else
                  "timm is not installed (`pip install timm`)."), ""]
    lines += targets_section(rows, times, args, have_peers, (extras or {}).get("explicit", {}))
    if extras:
        lines += paper_section(rows, times, extras, device)
    common.write_atomic(md_path, "\n".join(lines))
    common.write_csv(csv_path, *results_csv(rows, times))
    return [md_path, csv_path]


def mmseg_cell(name: str, params: int) -> str:
    """mmseg's count for ``name`` ("—" if mmseg has no such head), with ✓ where ours is the same
    integer and the difference where it is not."""
    theirs = common.mmseg_params(name)
    if theirs is None:
        return "—"
    return f"{theirs:,} ✓" if params == theirs else f"{theirs:,} (ours {params - theirs:+,})"


def mmseg_note(rows) -> str:
    compared = [r for r in rows if common.mmseg_params(r["name"]) is not None]
    if not compared:
        return ""
    same = [r["name"] for r in compared if r["head_params"] == common.mmseg_params(r["name"])]
    differ = [r["name"] for r in compared if r["head_params"] != common.mmseg_params(r["name"])]
    text = (f"{'All ' + str(len(same)) if not differ else len(same)} of the {len(compared)} heads compared "
            f"{'have' if len(same) != 1 else 'has'} exactly mmseg's parameter count")
    if differ:
        text += f"; {', '.join(differ)} {'differ' if len(differ) > 1 else 'differs'} (see the column)"
    return text + "."


def impl_note(rows) -> str:
    fused = [r["name"] for r in rows if common.head_config(r["name"]).get("impl") == "fused"]
    if not fused:
        return ""
    from benchmarks.fused import FUSED

    return (f"{', '.join(fused)} are measured at their default `impl: fused` (`F.scaled_dot_product_attention`, or "
            "segattn's blocked kernel where the value is wider than the keys; cc's passes as a custom autograd function "
            "that saves only its input and recomputes in backward): no HW x HW map is stored. fused.md compares "
            f"{', '.join(n for n in FUSED if n in fused)} with their explicit forms (`impl=explicit`, the maps as the "
            "papers write them); nl's and cc's are also measured here, for CCNet's comparison below.")


def _row(rows, name):
    return next((r for r in rows if r["name"] == name), None)


def targets_section(rows, times, args, have_peers, explicit=None) -> list[str]:
    """cc (the default, fused) against the explicit non-local block, the block CCNet compares with;
    the ratios to the default (fused) nl follow the table, without targets."""
    lines = ["## Targets", ""]
    explicit = explicit or {}
    cc, nl_fused = _row(rows, "cc"), _row(rows, "nl")
    nl = explicit.get("nl") or nl_fused
    nl_tag = "explicit nl" if "nl" in explicit else "nl"
    nl_time = times.get("explicit:nl") if "nl" in explicit else times.get("nl")
    table, after = [], []
    if cc and nl and "mech_flops" in cc:
        f = _ratio(cc["mech_flops"] + cc["mech_other"], nl["mech_flops"] + nl["mech_other"])
        table.append([f"cc / {nl_tag} FLOPs", f"<= {TARGETS['flops']}", fmt(f, 3), "yes" if f <= TARGETS["flops"] else "no"])
        for key, what in (("mech_train", "peak memory, training (fwd + bwd)"), ("mech_fwd", "peak memory, inference")):
            m = _ratio(cc[key], nl[key])
            table.append([f"cc / {nl_tag} {what}", "<= 0.20", f"{fmt(m, 3)} (1/{fmt(1 / m, 1)})",
                          "yes" if m <= TARGETS["memory"] else "no"])
        if "cc" in times and nl_time:
            t = _ratio(times["cc"], nl_time)
            table.append([f"cc / {nl_tag} forward time", f"<= {TARGETS['time']}", fmt(t, 3), "yes" if t <= TARGETS["time"] else "no"])
        if nl is not nl_fused and nl_fused and "mech_flops" in nl_fused:
            after = [
                "cc and nl are both at their default `impl: fused`; the targets compare cc with the non-local block "
                "as its paper builds it (`impl=explicit`: the HW x HW map), which is what CCNet's claims are about. "
                "Against the default (fused) nl, cc needs "
                f"{fmt(_ratio(cc['mech_flops'] + cc['mech_other'], nl_fused['mech_flops'] + nl_fused['mech_other']), 3)}x "
                f"its FLOPs, {fmt(_ratio(cc['mech_train'], nl_fused['mech_train']), 2)}x its training peak, "
                f"{fmt(_ratio(cc['mech_fwd'], nl_fused['mech_fwd']), 2)}x its inference peak"
                + (f" and {fmt(_ratio(times['cc'], times['nl']), 2)}x its forward time" if "cc" in times and "nl" in times else "")
                + " (no targets: the fused non-local block no longer stores the map CCNet's memory claim is about).", ""]
    if have_peers:
        for name in TIMM_PEERS:
            if name in times and f"timm:{name}" in times:
                t = _ratio(times[name], times[f"timm:{name}"])
                table.append([f"{name} / timm forward time", f"<= {PEER_LIMIT}", fmt(t), "yes" if t <= PEER_LIMIT else "no"])
    if table:
        lines += [common.markdown_table(["target", "limit", "measured", "met"], table, align="llrl"), ""] + after
    if args.size != 97:
        lines += [f"(The targets are set at 97x97; this run is at {args.size}x{args.size}.)", ""]
    if torch.device(args.device).type == "cuda":
        lines += ["(The time targets are set for the CPU. On the GPU a batch-1 forward of these modules takes "
                  "0.2-10 ms, mostly kernel launches and Python: the small gates measure dispatch overhead, "
                  "not arithmetic.)", ""]
    if not have_peers:
        lines += ["The timm comparisons need timm (`pip install timm`) and a run without `--quick`.", ""]
    return lines


def paper_section(rows, times, extras, device) -> list[str]:
    return ["## Against the papers", ""] + cc_vs_nl_section(rows, times, extras, device) + ema_vs_psa_section(extras)


def _cc_nl_rows(cc, cc_x, nl, nl_fused, times) -> list[list[str]]:
    """The CCNet vs non-local table: the criss-cross module and the non-local block, fused and explicit."""
    def row(label, r, key):
        return [label, fmt((r["mech_flops"] + r["mech_other"]) / 1e9, 2), fmt(r["mech_fwd"] / MiB, 1),
                fmt(r["mech_saved"] / MiB, 1), fmt(r["mech_train"] / MiB, 1),
                fmt(times[key] * 1e3, 0) if key in times else "—"]

    return ([row("cc (default: fused)", cc, "cc")] + ([row("cc, `impl=explicit`", cc_x, "explicit:cc")] if cc_x else [])
            + [row("nl (default: fused)", nl_fused, "nl"),
               row("nl, `impl=explicit` (the paper's block)", nl, "explicit:nl")])


def cc_vs_nl_section(rows, times, extras, device) -> list[str]:
    """CCNet's FLOP and memory claims against the non-local block, at 97x97 (nothing at other sizes)."""
    where = "GPU" if device.type == "cuda" else "CPU"
    cc, nl_fused = _row(rows, "cc"), _row(rows, "nl")
    ref = extras.get("explicit", {})
    nl, cc_x = ref.get("nl"), ref.get("cc")
    lines = []
    if cc and nl and nl_fused and "mech_flops" in cc and extras["size"] == 97:
        cc_g = cc["mech_flops"] / 1e9
        nl_g = nl["mech_flops"] / 1e9
        fwd_x = nl["mech_fwd"] / cc["mech_fwd"]
        train_x = nl["mech_train"] / cc["mech_train"]
        fmap = cc["channels"] * extras["size"] ** 2 * 4 / MiB
        hw = extras["size"] ** 2

        def vs(a, b):  # "0.72x" / "1.4x": a's share of b
            return f"{fmt(a / b, 2)}x"

        mem_rows = _cc_nl_rows(cc, cc_x, nl, nl_fused, times)
        lines += [
            "**CCNet vs non-local** (1 x 512 x 97 x 97, both as the official code builds them: RCCA with "
            "recurrence 2 and C/8 query/key; non-local embedded Gaussian with C/2). The CCNet paper counts about 8 "
            "GFLOPs per recurrence against 108 GFLOPs for the non-local block (85 % fewer) and reports 11x less "
            "GPU memory. Both claims are about the non-local block as its paper writes it, with the HW x HW "
            "attention map; our default nl (`impl: fused`) never stores that map, so the comparison is made with "
            "`impl=explicit` nl, and the fused nl is listed next to it:",
            "",
            common.markdown_table(["module", "GFLOPs", "fwd MiB", "saved MiB", "train MiB", f"fwd ms"], mem_rows,
                                  align="lrrrrr"),
            "",
            f"We count {fmt(cc_g / 2, 2)} GFLOPs per recurrence ({fmt(cc_g, 2)} for two) against "
            f"{fmt(nl_g, 1)} GFLOPs for the non-local block: {fmt(100 * (1 - cc_g / nl_g), 0)} % fewer "
            "(convolutions and matrix products; the element-wise and softmax work adds under 1 % to either; the "
            "fused forms do the same products). The per-recurrence count matches the paper; the non-local count is "
            f"{fmt(100 * (1 - nl_g / 108), 0)} % under its 108, which the element-wise work does not explain and "
            "the paper does not say how it counted.",
            "",
            f"Memory against the explicit non-local block: it needs {fmt(fwd_x, 1)}x the criss-cross module's peak in "
            f"inference and {fmt(train_x, 1)}x in training on the {where} (the paper: 11x). Its cost is the "
            f"{hw} x {hw} attention map ({fmt(hw ** 2 * 4 / MiB, 0)} MiB in float32, held as scaled logits and as "
            "softmax output at the inference peak, and saved once for backward). The criss-cross module runs each "
            "pass as a custom autograd function that, like the `ca_weight` / `ca_map` ops of CCNet's CUDA "
            "extension the paper measured, saves only its input and recomputes the projections and the "
            "(H+W-1) x HW affinities in backward, and it builds the value map and its aggregation 64 channels at a "
            f"time; each full-width 512 x 97 x 97 map is {fmt(fmap, 1)} MiB, and its training peak of "
            f"{fmt(cc['mech_train'] / MiB, 0)} MiB is {fmt(cc['mech_train'] / MiB / fmap, 1)} such maps (the "
            "backward keeps at most one pass's intermediate maps at a time)."
            + (f" With autograd through the einsum form (`impl=explicit`, CCNet's pure-PyTorch code) the value map and "
               "the row and column aggregations of both recurrences are kept: "
               f"{fmt(cc_x['mech_train'] / MiB, 0)} MiB in training, and the explicit non-local block needs "
               f"{fmt(nl['mech_train'] / cc_x['mech_train'], 1)}x that." if cc_x else "")
            + " The criss-cross floor is linear in HW, the non-local map quadratic, so the ratio grows with the map "
            "(see `scaling.md`).",
            "",
            f"Against the fused non-local block (`F.scaled_dot_product_attention`, no stored map) the criss-cross "
            f"module needs {vs(cc['mech_fwd'], nl_fused['mech_fwd'])} its inference peak and "
            f"{vs(cc['mech_train'], nl_fused['mech_train'])} its training peak, for "
            f"{vs(cc_g, nl_fused['mech_flops'] / 1e9)} its FLOPs: with both fused, the memory argument for "
            "criss-cross attention is "
            + ("reduced to a modest saving" if cc["mech_train"] < nl_fused["mech_train"] else "gone")
            + "; what remains is the FLOP count.",
            "",
        ]
        if "cc" in times and "explicit:nl" in times and "nl" in times:
            rate = {"cc": (cc["mech_flops"] + cc["mech_other"]) / times["cc"] / 1e9,
                    "nl": (nl["mech_flops"] + nl["mech_other"]) / times["explicit:nl"] / 1e9,
                    "nl_fused": (nl_fused["mech_flops"] + nl_fused["mech_other"]) / times["nl"] / 1e9}
            lines += [f"{where} forward time: cc {fmt(times['cc'] * 1e3, 0)} ms, explicit nl "
                      f"{fmt(times['explicit:nl'] * 1e3, 0)} ms (a ratio of {fmt(times['cc'] / times['explicit:nl'], 2)}), "
                      f"fused nl {fmt(times['nl'] * 1e3, 0)} ms (a ratio of {fmt(times['cc'] / times['nl'], 2)}), "
                      f"against a FLOP ratio of {fmt(cc_g / nl_g, 2)}; they run at {fmt(rate['cc'], 1)}, "
                      f"{fmt(rate['nl'], 1)} and {fmt(rate['nl_fused'], 1)} GFLOP/s. " + (
                          "The criss-cross products are small (per row and per column: 97 x 64 by 64 x 97 for the "
                          "affinities, 97 x 97 by 97 x 64 for the aggregation of a 64-channel slice) and einsum copies "
                          "the maps into the layout they need, so they run further from the machine's peak than the "
                          "non-local block's large products."
                          if rate["cc"] < min(rate["nl"], rate["nl_fused"]) else
                          "The explicit non-local block's 9409 x 9409 softmax and its 338 MiB maps are passes over "
                          "memory that the FLOP count hardly sees (softmax: 5 FLOPs per element)."), ""]
    return lines


def ema_vs_psa_section(extras) -> list[str]:
    """The EMANet paper's GFLOPs of EMANet's and PSANet's heads against ours, at 65x65."""
    e = extras
    paper_ema, paper_psa = 43.1, 56.3
    ema_paper_way = e["ema_fc0"] + e["ema_emau"]
    psa_paper_way = e["psa_module"] + e["ema_fc0"]
    m = e["psa_mask"]
    recipe_mask = "x".join(str(v) for v in common.head_config("psa")["mask_size"])
    return [
        "**EMANet vs PSANet** (the EMANet paper's table: 513x513 input, ResNet-101, output stride 8, i.e. 65x65 c5; "
        "PSANet +56.3 and EMANet +43.1 GFLOPs over the backbone, a ratio of "
        f"{fmt(paper_ema / paper_psa, 2)}). Those numbers are multiply-accumulates, the convention of the time; in "
        "GMACs at 65x65 (21 classes) we count:",
        "",
        common.markdown_table(
            ["what", "GMACs", "paper"],
            [["EMANet head as the paper counts it: fc0 (3x3 conv 2048 -> 512) + EMAU(512, K=64, T=3)",
              fmt(ema_paper_way, 1), "43.1"],
             ["  of which EMAU", fmt(e["ema_emau"], 2), ""],
             [f"PSANet's official PSA module (hszhao/semseg: 2048 channels, branches 512, mask {m}x{m} at 33x33, "
              "unpadded projection), up to its 2048-channel context", fmt(e["psa_module"], 1), ""],
             ["PSA module + one 3x3 conv 2048 -> 512 (= fc0 above)", fmt(psa_paper_way, 1), "56.3"],
             ["PSA module + PSANet's 3x3 conv over cat(c5, context), 4096 -> 512 (`PSAHead.bottleneck`)",
              fmt(e["psa_module"] + e["psa_bottleneck"], 1), ""],
             ["our `ema` decode head (mmseg's EMAHead: 3x3 2048 -> 512, EMAU, 3x3 512 -> 256, concat with c5 + "
              "3x3 2304 -> 256, classifier)", fmt(e["ema_head"], 1), ""],
             ["our `psa` decode head = PSANet's head (mmseg's PSAHead: PSA module on c5, concat, 3x3 4096 -> 512, "
              "classifier)", fmt(e["psa_head"], 1), ""],
             [f"  of which its PSA module (the recipe's {recipe_mask} mask, mmseg's padded projection)",
              fmt(e["psa_head_module"], 1), ""],
             ["  of which the 3x3 conv 4096 -> 512", fmt(e["psa_bottleneck"], 1), ""]],
            align="lrr"),
        "",
        f"The EMANet number is reproduced: fc0 + EMAU = {fmt(ema_paper_way, 1)} GMACs against 43.1. PSANet's "
        f"56.3 is matched within {fmt(100 * abs(psa_paper_way - paper_psa) / paper_psa, 0)} % by the PSA module "
        "plus one 3x3 conv 2048 -> 512, the accounting that gives EMANet's number (the module plus the conv that "
        "brings the backbone to the head width). PSANet's head itself does not have that conv: it concatenates c5 "
        "with the module's context and goes on with a 3x3 conv over the 4096 channels, which costs "
        f"{fmt(e['psa_bottleneck'], 1)} GMACs, twice fc0. Our `psa` decode head is that head (PSA module + the "
        f"4096 -> 512 3x3 conv + classifier, as mmseg's PSAHead): {fmt(e['psa_head'], 1)} GMACs, of which "
        f"{fmt(e['psa_head_module'], 1)} for its PSA module. That is "
        f"{fmt(e['psa_head_module'] - e['psa_module'], 1)} more than the official module at this crop because the "
        f"recipe keeps its {recipe_mask} mask (the 1x1 conv that predicts the masks outputs "
        f"{int(recipe_mask.split('x')[0]) * int(recipe_mask.split('x')[1])} instead of {m * m} channels per "
        "grid cell) and mmseg pads the projection. Ratio EMA / PSA: paper "
        f"{fmt(paper_ema / paper_psa, 2)}, ours {fmt(ema_paper_way / psa_paper_way, 2)} with the paper's "
        f"accounting and {fmt(e['ema_head'] / e['psa_head'], 2)} for our two decode heads, the heads mmseg trains: "
        "EMAHead's convolutions after the EM unit run at 256 channels, PSAHead's 3x3 conv reads 4096.",
        "",
    ]


def main(argv=None) -> dict:
    args = parse_args(argv)
    with common.threads(args.threads):
        return run(args)


def run(args) -> dict:
    if args.fused:
        from benchmarks import fused

        argv = ["--size", str(args.size), "--device", args.device, "--warmup", str(args.warmup)]
        argv += (["--heads", args.heads] if args.heads else []) + (["--quick"] if args.quick else [])
        argv += (["--rounds", str(args.rounds)] if args.rounds else []) + (["--out", args.out] if args.out else [])
        return fused.run(fused.parse_args(argv))
    args.args_device = args.device
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    names = common.parse_names(args.heads, common.head_names())
    if args.size < 1:
        raise SystemExit(f"--size must be >= 1, got {args.size}")
    from tqdm import tqdm

    progress = tqdm(total=len(names), desc="heads", dynamic_ncols=True)
    rows = []
    for name in names:
        progress.set_postfix_str(name)
        rows.append(static_costs(name, args.size, device))
        progress.update(1)
    # CCNet's claim is against the explicit non-local block (the HW x HW map); the defaults are fused,
    # so nl (and cc, for the einsum form's own floor) are also measured with impl=explicit.
    references = [(n, "explicit") for n in REFERENCES if "cc" in names and "nl" in names
                  and common.head_config(n).get("impl", "explicit") != "explicit"]
    explicit = {}
    for name, impl in references:
        progress.set_postfix_str(f"{name} {impl}")
        explicit[name] = static_costs(name, args.size, device, impl=impl)
    peers = not args.quick
    head_lat = args.head_latency or device.type == "cuda"
    progress.set_postfix_str("latency")
    times = latencies(names, args.size, device, args.rounds, args.warmup, peers, head_lat, progress, references)
    progress.close()
    # Meta-device counts only: cheap at any size, so also in --quick runs.
    extras = dict(paper_setting_macs(65), size=args.size, explicit=explicit)
    paths = write_results(rows, times, args, extras)
    for p in paths:
        print(f"wrote {os.path.relpath(p)}")
    return {"rows": rows, "times": times, "paths": paths}


if __name__ == "__main__":
    main()
