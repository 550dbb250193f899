"""What each head costs at the paper setting: parameters, FLOPs, activation memory, latency.

    python benchmarks/heads.py                  # CPU, 97x97 R101-D8 features (769x769 crops) -> results/heads.md, .csv
    python benchmarks/heads.py --quick          # 2 timing rounds, no timm peers (a few minutes on 2 cores)
    python benchmarks/heads.py --device cuda    # measured on the GPU -> results/heads_cuda.md, .csv
    python benchmarks/heads.py --size 65        # 65x65 features (513x513 crops) -> results/heads_s65.md, .csv
    python benchmarks/heads.py --fused          # fused vs explicit attention: benchmarks/fused.py

A ``--quick`` run writes results/quick/, a run of some ``--heads`` results/partial/: only a full run
replaces the committed results. This file measures; benchmarks/heads_report.py writes the report.

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
from benchmarks import heads_report  # noqa: E402

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
        feats = common.stage_inputs(size, measure_dev)
        head.eval()
        with common.cpu_emulation(), torch.no_grad():
            f = common.count_flops(lambda: head(feats))
        row.update(head_flops=f.matmul, head_other=f.other)
        mem = common.activation_memory(head, lambda: [common.stage_inputs(size, measure_dev)], measure_dev)
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
    feats = common.stage_inputs(size, device) if heads else None
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
    feats = common.stage_inputs(size, meta)
    for name in ("ema", "psa"):
        head = common.build_decode_head(name, common.R101_CHANNELS, 21).to(meta).eval()
        out[f"{name}_head"] = macs(lambda: head(feats))
        if name == "psa":
            # Our psa decode head is PSANet's head: its module (the recipe's mask, mmseg's padded
            # projection), the bottleneck, the classifier.
            out["psa_head_module"] = macs(lambda: head.attention.context(c5))
            out["psa_bottleneck"] = macs(lambda: head.bottleneck(cat))
    return out


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
    paths = heads_report.write_results(rows, times, args, extras)
    for p in paths:
        print(f"wrote {os.path.relpath(p)}")
    return {"rows": rows, "times": times, "paths": paths}


if __name__ == "__main__":
    main()
