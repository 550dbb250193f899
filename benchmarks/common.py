"""Measuring tools shared by the benchmark scripts: FLOPs, activation memory, latency, result files.

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts matrix products and convolutions
  (2 FLOPs per multiply-accumulate). Everything else it does not see is counted here by
  ``OpCounter`` with the per-element weights of ``PER_ELEMENT`` (softmax, normalisation,
  pooling, resizing, reductions, element-wise ops); pure data movement (gather, cat, copies) is
  0 FLOPs and is reported separately as elements moved. CPU flash attention (what
  ``F.scaled_dot_product_attention`` runs on the CPU) is also absent from FlopCounterMode's
  table and is added with its own formula.
- Activation memory: ``LiveBytes`` (segattn/engine/memory.py, which the trainer's memory check
  uses too) is a dispatch mode that adds up the storages created while it is active and follows
  when they are freed, so its peak is the activation memory of a forward (or of a forward +
  backward). It runs on the ``meta`` device: the shapes, and therefore the bytes, are exactly
  those of a CPU run, at no compute cost. ``cpu_emulation`` makes the meta run pick the CPU's
  attention kernel, the one place where the kernel (and its memory) depends on the device. On
  CUDA, ``torch.cuda.max_memory_allocated`` is used instead.
- Latency: ``time_interleaved`` runs every case once per round and rotates the order between
  rounds, so that a slow spell of a shared machine hits all cases alike; the median over rounds
  is reported.
"""

from __future__ import annotations

import csv
import inspect
import io
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import FlopCounterMode, bmm_flop, sdpa_backward_flop_count, sdpa_flop_count
from torch.utils.weak import WeakIdKeyDictionary

from segattn.engine.memory import LiveBytes, cpu_emulation  # noqa: F401  (the library's meta-device counter)
from segattn.io import atomic_write

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
CONF = os.path.join(REPO, "conf")
MiB = 2**20


def add_run_args(p, quick: str, rounds: str = "default 3, --quick 1", threads: str = "all cores") -> None:
    """The options every side-by-side timing script takes: --device, --threads, --rounds, --warmup,
    --quick (``quick`` says what it leaves out) and --out (see :func:`results_dir`)."""
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help=f"torch CPU threads (default: {threads})")
    p.add_argument("--rounds", type=int, default=None, help=f"timing rounds (median; {rounds})")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--out", default=None, help="folder for the result files (default: results/, or results/quick/ "
                                               "or results/partial/ for a quick run or a subset)")


def results_dir(out: str | None, quick: bool, partial: bool) -> str:
    """Where a run writes its results: ``out`` when given; else results/ for a full run, and
    results/quick/ or results/partial/ (both ignored by git) for a quick run or a subset, so that
    neither ever overwrites the committed full results."""
    if out:
        return out
    return os.path.join(RESULTS, "quick" if quick else "partial" if partial else "")

# ResNet-101-D8 stage channels [c2, c3, c4, c5]; c2 has stride 4, the others stride 8.
R101_CHANNELS = [256, 512, 1024, 2048]


# ----------------------------------------------------------------------------- heads from conf/


def head_config(name: str) -> dict:
    """``conf/head/<name>.yaml`` as a plain dict (the hyper-parameters a user trains with)."""
    from omegaconf import OmegaConf

    path = os.path.join(CONF, "head", f"{name}.yaml")
    if not os.path.isfile(path):
        from segattn.plugins import plugin_of

        if plugin_of(name):  # a plugin's head without a yaml of its own: the generic head's keys
            return {**head_config("custom"), "name": name}
        raise ValueError(f"{path}: no head config named {name!r}; choices: {', '.join(head_names())}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def head_names() -> list[str]:
    """``fcn`` and every other registered head, in the README's order."""
    from segattn.models.heads import head_names as names

    return names()


def mmseg_params(name: str) -> int | None:
    """mmsegmentation's decode-head parameter count for head ``name`` (its Cityscapes R50-D8 recipe, 19
    classes, no auxiliary head; OCRNet's both cascade heads), None where mmseg has no such head: the
    head's declared fact."""
    from segattn.models.heads import head_facts

    return head_facts(name).mmseg_params


def parse_names(text: str | None, allowed: list[str], what: str = "--heads") -> list[str]:
    if not text:
        return list(allowed)
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SystemExit(f"{what}: unknown {bad}; choices: {', '.join(allowed)}")
    return names


def mechanism_kwargs(name: str, cfg: dict) -> dict:
    """The keys of a head config that the registered module's constructor takes."""
    from segattn.models.attention import ATTENTIONS

    params = inspect.signature(ATTENTIONS[name].__init__).parameters
    return {k: v for k, v in cfg.items() if k in params and k not in ("self", "channels")}


def build_mechanism(name: str, channels: int, **overrides) -> torch.nn.Module:
    """The registered module ``name`` with its conf/head hyper-parameters (``overrides`` win)."""
    from segattn.models.attention import build_attention

    kwargs = {**mechanism_kwargs(name, head_config(name)), **overrides}
    return build_attention(name, channels, **kwargs)


def build_decode_head(name: str, in_channels: list[int], num_classes: int = 19, **overrides) -> torch.nn.Module:
    """The decode head as ``train.py head=<name>`` builds it (conf/head/<name>.yaml + ``overrides``)."""
    from segattn.models.heads import build_head

    cfg = {**head_config(name), **overrides}
    return build_head(cfg, in_channels, num_classes)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stage_inputs(size: int, device, batch: int = 1) -> list[torch.Tensor]:
    """R101-D8 stage outputs for an S x S c5: c2 at stride 4 is (2S - 1) x (2S - 1)."""
    c2 = 2 * (size - 1) + 1
    shapes = [(batch, R101_CHANNELS[0], c2, c2)] + [(batch, c, size, size) for c in R101_CHANNELS[1:]]
    return [torch.randn(s, device=device) if torch.device(device).type != "meta" else torch.empty(s, device=device)
            for s in shapes]


# ----------------------------------------------------------------------------- FLOPs


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _baddbmm_inplace_flops(self, batch1, batch2, *args, out_shape=None, **kwargs) -> int:
    return bmm_flop(batch1, batch2)  # (shapes: FlopCounterMode passes the operands as their shapes)


# CPU flash attention is not in FlopCounterMode's table (it would count 0): same formula as the
# CUDA kernels it does know. Neither is the in-place ``baddbmm_`` (the accumulating products of the
# blocked attention kernel's backward, ``segattn.ops``): counted as the product it computes.
CUSTOM_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
    torch.ops.aten.baddbmm_: _baddbmm_inplace_flops,
}

# FLOPs per element of the largest operand, for the ops FlopCounterMode leaves out. The weights
# are the usual textbook counts (softmax: max, subtract, exp, sum, divide); every op tagged
# pointwise by ATen (add, mul, relu, sigmoid, masked_fill, ...) costs 1 per output element.
PER_ELEMENT = {
    "_softmax": 5, "_safe_softmax": 5, "_log_softmax": 5, "floor_divide": 1, "_softmax_backward_data": 4, "_log_softmax_backward_data": 3,
    "sum": 1, "mean": 1, "amax": 1, "amin": 1, "max": 1, "min": 1, "prod": 1, "cumsum": 1,
    "linalg_vector_norm": 2, "norm": 2, "var": 3, "std": 3, "var_mean": 3, "std_mean": 3, "logsumexp": 4,
    "native_batch_norm": 5, "_native_batch_norm_legit": 5, "_native_batch_norm_legit_functional": 5,
    "_native_batch_norm_legit_no_training": 2, "native_batch_norm_backward": 6,
    "native_layer_norm": 6, "native_layer_norm_backward": 8, "native_group_norm": 6, "native_group_norm_backward": 8,
    "avg_pool2d": 1, "avg_pool2d_backward": 1, "max_pool2d_with_indices": 1, "max_pool2d_with_indices_backward": 1,
    "_adaptive_avg_pool2d": 1, "_adaptive_avg_pool2d_backward": 1, "adaptive_max_pool2d": 1,
    "upsample_bilinear2d": 7, "upsample_bilinear2d_backward": 7, "upsample_nearest2d": 0,
    "native_dropout": 2, "native_dropout_backward": 1, "bernoulli": 1,
    "nll_loss_forward": 1, "nll_loss2d_forward": 1, "nll_loss_backward": 1, "nll_loss2d_backward": 1,
    "_fused_sgd": 3, "_foreach_add": 1, "_foreach_mul": 1, "_foreach_addcmul": 2, "_foreach_addcdiv": 2,
    "_foreach_lerp": 2, "_foreach_sqrt": 1, "_foreach_div": 1, "_foreach_maximum": 1,
}
# Data movement: no arithmetic, but HW x HW-sized for some mechanisms (PSA's gather); counted as
# elements written.
MOVES = {
    "gather", "scatter", "scatter_add", "index", "index_select", "index_put", "cat", "stack", "copy", "clone",
    "_to_copy", "masked_scatter", "constant_pad_nd", "repeat", "roll", "flip", "embedding", "im2col", "col2im",
    "new_zeros", "zeros_like", "ones_like", "fill", "zero", "contiguous", "_unsafe_index", "slice_backward",
    "select_backward", "index_add", "unfold_backward", "expand_backward",
}
# Creation and bookkeeping ops without arithmetic or data worth counting.
FREE = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "ones", "full", "full_like",
    "arange", "scalar_tensor", "lift_fresh", "detach", "alias", "_local_scalar_dense", "eye", "_fused_sdp_choice",
    "rand", "randn", "randint", "normal", "uniform", "set", "resize", "_unsafe_view", "is_same_size", "_has_compatible_shallow_copy_type",
}


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class OpCounter(TorchDispatchMode):
    """Counts the FLOPs of the ops FlopCounterMode does not (``skip`` holds the ones it does)."""

    def __init__(self, skip: set):
        super().__init__()
        self.skip = skip
        self.flops = Counter()  # op name -> FLOPs
        self.moved = Counter()  # op name -> elements written
        self.uncounted = Counter()  # op name -> elements, for ops with no rule (reported, not guessed)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if packet in self.skip or func.is_view:
            return out  # counted by FlopCounterMode, or a view (no work)
        # In-place variants (add_, relu_, copy_) count as their functional op.
        name = packet.__name__[:-1] if packet.__name__.endswith("_") else packet.__name__
        outs, ins = _tensors(out), _tensors((args, kwargs))
        big = max([t.numel() for t in outs + ins] or [0])
        out_numel = max([t.numel() for t in outs] or [0])
        if name in FREE:
            pass
        elif torch.Tag.pointwise in func.tags:
            self.flops[name] += out_numel
        elif name in PER_ELEMENT:
            self.flops[name] += PER_ELEMENT[name] * big
        elif name in MOVES:
            self.moved[name] += out_numel
        else:
            self.uncounted[name] += big
        return out


class Flops:
    """FLOPs of one call: ``matmul`` (FlopCounterMode: convolutions and matrix products), ``other``
    (OpCounter), ``moved`` (elements written by data-movement ops), per-op breakdowns."""

    def __init__(self, fc: FlopCounterMode, ops: OpCounter):
        self.matmul = int(fc.get_total_flops())
        self.matmul_by_op = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
        self.other = int(sum(ops.flops.values()))
        self.other_by_op = dict(ops.flops.most_common())
        self.moved = int(sum(ops.moved.values()))
        self.moved_by_op = dict(ops.moved.most_common())
        self.uncounted = dict(ops.uncounted.most_common())

    @property
    def total(self) -> int:
        return self.matmul + self.other

    @property
    def macs(self) -> float:
        """Multiply-accumulates of the convolutions and matrix products (what many papers call FLOPs)."""
        return self.matmul / 2


def count_flops(fn: Callable[[], object]) -> Flops:
    """FLOPs of ``fn()`` (run it on ``meta`` tensors to count without computing)."""
    fc = FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)
    ops = OpCounter(set(fc.flop_registry))
    # FlopCounterMode is entered last, so it sees each op first and OpCounter sees what it runs.
    with ops, fc:
        fn()
    return Flops(fc, ops)


# ----------------------------------------------------------------------------- memory


def peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """Peak activation bytes of ``fn()`` on ``device`` (meta/cpu: LiveBytes; cuda: the allocator)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with cpu_emulation(), LiveBytes() as live:
        fn()
    return live.peak


def saved_bytes(fn: Callable[[], object], exclude: list[torch.Tensor]) -> int:
    """Bytes autograd keeps for backward during ``fn()`` (each storage once; not ``exclude``,
    i.e. parameters and inputs, which exist anyway)."""
    seen = WeakIdKeyDictionary()
    for t in exclude:
        seen[t.untyped_storage()] = 0

    def pack(t):
        st = t.untyped_storage()
        if st not in seen:
            seen[st] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _sum_outputs(out) -> torch.Tensor:
    return sum(t.float().sum() for t in _tensors(out))


def train_mode(module: torch.nn.Module) -> torch.nn.Module:
    """Training mode with BatchNorm statistics frozen: a batch of one has a single value per channel
    after global pooling (SK, SE-style gates), which BatchNorm cannot normalise in training.

    SK's module is put in eval mode as a whole: its training mode differs from eval only by the
    BatchNorm on the pooled vector (frozen here anyway) and by refusing a batch of one for its sake.
    """
    from segattn.models.attention import ATTENTIONS

    frozen = tuple(c for c in (torch.nn.modules.batchnorm._BatchNorm, ATTENTIONS.get("sk")) if c is not None)
    module.train()
    for m in module.modules():
        if isinstance(m, frozen):
            m.eval()
    return module


def activation_memory(module: torch.nn.Module, make_inputs: Callable[[], list], device) -> dict[str, int]:
    # make_inputs() returns the positional arguments (tensors or lists of tensors).
    """Peak bytes of an inference forward (eval, no_grad), bytes saved for backward and peak bytes
    of a training forward + backward (``train_mode``, inputs requiring grad as inside a network;
    the peak includes the parameter gradients the backward creates)."""
    device = torch.device(device)
    module.to(device)
    with (cpu_emulation() if device.type == "meta" else _nullcontext()):
        inputs = make_inputs()
        module.eval()
        with torch.no_grad():
            fwd = peak_bytes(lambda: module(*inputs), device)
        train_mode(module)
        for p in module.parameters():
            p.grad = None
        inputs = tree_map(lambda t: t.detach().requires_grad_(True) if isinstance(t, torch.Tensor) else t,
                          make_inputs())
        saved = saved_bytes(lambda: module(*inputs), exclude=list(module.parameters()) + _tensors(inputs))
        train = peak_bytes(lambda: _sum_outputs(module(*inputs)).backward(), device)
        for p in module.parameters():
            p.grad = None
        module.eval()
    return {"fwd": fwd, "saved": saved, "train": train}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------- time


class threads:
    """``with threads(n):`` runs with ``n`` torch threads (None: unchanged) and restores the count after,
    so that calling a benchmark's ``main`` in-process (the tests do) leaves the caller's setting alone."""

    def __init__(self, n: int | None):
        if n is not None and int(n) < 1:
            raise SystemExit(f"--threads must be >= 1, got {n}")
        self.n = n

    def __enter__(self):
        self.saved = torch.get_num_threads()
        if self.n is not None:
            torch.set_num_threads(int(self.n))
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)
        return False


def compose_config(overrides: list[str]) -> dict:
    """conf/train.yaml with Hydra ``overrides``, as ``train.py`` composes it (a plain dict)."""
    from segattn.cli import compose_train_config

    return compose_train_config(list(overrides), prog="benchmarks")


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def time_interleaved(cases: dict[str, Callable[[], object]], rounds: int, warmup: int, device="cpu",
                     progress=None) -> dict[str, float]:
    """Median seconds per case; every round runs each case once, in an order rotated per round."""
    device = torch.device(device)
    names = list(cases)
    times = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % max(1, len(names))
        for n in names[k:] + names[:k]:
            t = _time_once(cases[n], device)
            if r >= warmup:
                times[n].append(t)
            if progress is not None:
                progress.update(1)
    return {n: statistics.median(t) for n, t in times.items()}


def matmul_cases(n: int, device="cpu") -> dict[str, Callable[[], object]]:
    """Two fp32 n x n by n x n products: ``torch.mm`` (BLAS: MKL here) and the same product as a 1x1
    convolution (oneDNN, the library the model's convolutions run on; on AMD CPUs MKL's sgemm can
    be the slower of the two)."""
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    x, w = torch.randn(1, n, n, 1, device=device), torch.randn(n, n, 1, 1, device=device)
    return {"mm": lambda: torch.mm(a, b), "conv1x1": lambda: torch.nn.functional.conv2d(x, w)}


def matmul_peak(device="cpu", sizes=(1024, 2048, 3072), repeats: int = 5) -> float:
    """Measured fp32 matrix-multiply FLOP/s: the best over ``sizes`` and both libraries of the median
    of ``repeats``."""
    best = 0.0
    for n in sizes:
        times = time_interleaved(matmul_cases(n, device), rounds=repeats, warmup=1, device=device)
        best = max(best, 2 * n**3 / min(times.values()))
    return best


# ----------------------------------------------------------------------------- result files


def machine_line(device="cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                what = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        n = torch.get_num_threads()
        what += f", {n} thread{'s' if n > 1 else ''} of {os.cpu_count()} cores"
    return f"{what}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}"


def markdown_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_atomic(path: str, data: str | bytes) -> str:
    """Write ``path`` through a temporary file in the same folder, then rename it."""
    with atomic_write(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def write_csv(path: str, headers: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(headers)
    w.writerows(rows)
    return write_atomic(path, buf.getvalue())


def save_figure(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return write_atomic(path, buf.getvalue())


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and x != x:
        return "—"
    return f"{x:.{digits}f}"
