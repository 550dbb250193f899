"""How much memory a training step needs, counted on the ``meta`` device, and how much the device has.

- ``LiveBytes`` is a dispatch mode that adds up the storages created while it is active and follows
  when they are freed, so its peak is the activation memory of a forward (or of a forward +
  backward, with the gradients it creates). On ``meta`` tensors the shapes, and therefore the
  bytes, are those of a CPU run, at no compute cost and without allocating anything.
  ``cpu_emulation`` makes a meta run pick the CPU's attention kernel, the one place where the
  kernel (and its memory) depends on the device. The benchmarks use both too.
- ``estimate_training_step`` builds the configured model on ``meta`` and runs one forward, loss and
  backward of one micro-batch there: weights, gradients, optimizer state, activations and the
  batches the data loader holds.
- ``available_bytes`` is what the device can still give: ``MemAvailable`` of ``/proc/meminfo`` on
  the CPU (capped by a cgroup's memory limit, as under Slurm or Docker), free memory on a GPU
  (``torch.cuda.mem_get_info``).
- ``check_training_memory`` (called by the trainer's set-up, ``trainer.check_memory``) compares the
  two before the first step: a run that cannot fit stops with the estimate, what is available and
  the largest batch or crop that fits, instead of being killed by the kernel's out-of-memory killer
  without a word.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

GiB = 2**30
# The resident peak of a step exceeds its tensors' bytes: the allocator keeps freed blocks for reuse
# (glibc's malloc on the CPU, PyTorch's caching allocator on a GPU). Measured on the CPU after a
# warm-up step (VmHWM, tests/test_first_hour.py): 1.1-1.4x for FCN heads, 1.6-2.0x for DANet at 256 px
# (width 16, batch 4). The tensors themselves are counted exactly (DANet there: 174 MiB of activations
# on meta and in a real CPU step alike); the rest is glibc's: once a large block has been freed, its
# mmap threshold rises (up to 32 MiB) and later large tensors come from the heap, which keeps them
# resident after they are freed. DANet's step frees many (three full-size outputs and their losses, the
# attention blocks), so it keeps more, and how much varies from run to run (294-370 MiB resident for
# the same step). A fixed threshold (mallopt M_MMAP_THRESHOLD = 4 MiB) brings it to 1.09x the tensors,
# but page-faults every large tensor in anew: 35 % more CPU time per step, so the trainer does not set it.
ALLOCATOR_SLACK = 1.25


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created while active and still alive; ``peak`` is their maximum.

    Storages that existed before (parameters, inputs) are not counted: what is measured is the
    activation memory of the call (plus the gradients a backward creates).
    """

    def __init__(self):
        super().__init__()
        self.seen = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            st = t.untyped_storage()
            if st not in self.seen:
                n = st.nbytes()
                self.seen[st] = n
                self.current += n
                weakref.finalize(st, self._free, n)
        self.peak = max(self.peak, self.current)
        return out


class _MetaAsCpuAutocast(torch.autocast):
    """``torch.autocast`` that accepts ``device_type="meta"`` (as the CPU's): autocast has no meta
    backend, and a module that disables autocast around a block (DANet's CAM) must still run."""

    def __init__(self, device_type, *args, **kwargs):
        super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)


def _sdpa_as_on_cpu(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """``F.scaled_dot_product_attention`` that, on meta tensors, runs the kernel the CPU picks."""
    if query.device.type == "meta" and not kwargs:
        like_cpu = [torch.empty(t.shape, dtype=t.dtype) for t in (query, key, value)]
        mask = None if attn_mask is None else torch.empty(attn_mask.shape, dtype=attn_mask.dtype)
        choice = torch.ops.aten._fused_sdp_choice(*like_cpu, mask, dropout_p, is_causal, scale=scale)
        if choice == torch.nn.attention.SDPBackend.FLASH_ATTENTION.value:
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]
    return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                 **kwargs)


_SDPA = torch.nn.functional.scaled_dot_product_attention


class cpu_emulation:
    """Run modules on ``meta`` tensors as the CPU would.

    - Attention: on meta, ``F.scaled_dot_product_attention`` takes the math path, which stores the
      L x L matrix; the CPU takes flash attention, which does not. Inside this context the meta
      run calls the kernel the CPU would choose.
    - ``torch.autocast(device_type="meta")`` is accepted (there is no meta autocast backend; DANet's
      CAM disables autocast around its energies).
    """

    def __enter__(self):
        self._saved = (torch.autocast, torch.nn.functional.scaled_dot_product_attention)
        torch.autocast = _MetaAsCpuAutocast
        torch.nn.functional.scaled_dot_product_attention = _sdpa_as_on_cpu
        return self

    def __exit__(self, *exc):
        torch.autocast, torch.nn.functional.scaled_dot_product_attention = self._saved
        return False


# --- the estimate ----------------------------------------------------------------------------------

@dataclass
class StepMemory:
    """Bytes of one training step, by part (``estimate_training_step``)."""
    weights: int  # parameters and buffers
    gradients: int  # one per parameter
    optimizer: int  # the optimizer's state (SGD's momentum: one copy of the parameters; AdamW's: two)
    activations: int  # the rest of the peak of forward + loss + backward of one micro-batch
    data: int  # the batches the data loader holds (its workers prefetch two each)
    batch_size: int
    crop_size: tuple[int, int]

    @property
    def tensors(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.data

    @property
    def fixed(self) -> int:
        """The part that does not grow with the batch or the crop."""
        return self.weights + self.gradients + self.optimizer

    @property
    def peak(self) -> int:
        """The estimated resident peak: the tensors and the allocator's slack."""
        return int(self.tensors * ALLOCATOR_SLACK)


def _build_on_meta(cfg: dict, num_classes: int) -> torch.nn.Module:
    """The configured model on the meta device, leaving the random state as it was.

    The trainer estimates after seeding and caches the estimate per configuration (``_ESTIMATES``, the
    seed left out). A build that drew from the global generator (the fallback below initialises real
    weights) would shift dropout and every later draw of the run, and only in the first run of a
    configuration in a process: a sweep's second seed would then differ from the same run alone.
    """
    from ..models import build_model_from_config
    from .distributed import revert_sync_batchnorm

    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                model = build_model_from_config(cfg, num_classes, pretrained=False)
        except Exception:  # a module whose constructor computes with tensor values: build it, then move it
            model = build_model_from_config(cfg, num_classes, pretrained=False).to("meta")
    # One process trains with plain BN (PyTorch has no SyncBN on the CPU): the same here, on meta too.
    with torch.device("meta"):
        return revert_sync_batchnorm(model)


def _activation_bytes(model: torch.nn.Module, batch_size: int, crop: tuple[int, int], num_classes: int) -> int:
    images = torch.empty(batch_size, 3, *crop, device="meta")
    masks = torch.zeros(batch_size, *crop, dtype=torch.long, device="meta")
    model.train()
    for p in model.parameters():
        p.grad = None

    def step():
        outputs = model(images)
        try:
            loss = model.loss({k: v.float() for k, v in outputs.items()}, masks)[0]
        except Exception:  # a loss that reads values (OHEM's threshold): a loss over the same logits
            loss = sum(torch.nn.functional.interpolate(v.float(), size=crop, mode="bilinear").sum()
                       for v in outputs.values() if v.dim() == 4)
        loss.backward()

    with torch.random.fork_rng(devices=[]), cpu_emulation(), LiveBytes() as live:  # (dropout draws nothing here)
        step()
    for p in model.parameters():
        p.grad = None
    return live.peak


def estimate_training_step(cfg: dict, num_classes: int, batch_size: int | None = None,
                           crop_size=None, model: torch.nn.Module | None = None) -> StepMemory:
    """The memory of one training step of ``cfg`` (a composed conf/train.yaml as a dict) on a CPU, at
    ``batch_size`` and ``crop_size`` (default: the config's), counted on the ``meta`` device.

    A GPU needs about the same (its attention kernels also avoid the L x L matrix) plus the CUDA
    context. Mixed precision (``trainer.amp``) keeps many activations in 16 bits: the estimate is
    fp32's, an upper bound there.
    """
    t, d = cfg["trainer"], cfg["dataset"]
    batch = int(batch_size or t["batch_size"])
    crop = tuple(int(c) for c in (crop_size or d["crop_size"]))
    model = model if model is not None else _build_on_meta(cfg, num_classes)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    opt = cfg.get("optimizer") or {}
    if opt.get("name", "sgd") == "sgd":
        moments = 1 if float(opt.get("momentum", 0.9) or 0) > 0 else 0
    else:
        moments = 2
    # The backward's peak holds the gradients it has made so far: counted apart, as a fixed part.
    activations = max(_activation_bytes(model, batch, crop, num_classes) - params, 0)
    # A batch: float32 images and int64 masks. The main process holds one; each worker prefetches two.
    per_batch = batch * crop[0] * crop[1] * (3 * 4 + 8)
    data = per_batch * (1 + 2 * int(t.get("num_workers", 0) or 0))
    return StepMemory(params + buffers, params, moments * params, activations, data, batch, crop)


# --- what the device has ---------------------------------------------------------------------------

def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What the memory limit of this process's cgroup (v2 or v1) still allows, if there is one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            return max(0, int(limit) - usage)
    return None


def available_bytes(device: torch.device | str) -> tuple[int, str] | None:
    """``(bytes, where they were read)`` the device can still give, or None when it cannot tell."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device} (torch.cuda.mem_get_info)"
    if device.type != "cpu":
        return None
    avail, where = _meminfo_available(), "MemAvailable in /proc/meminfo"
    if avail is None:
        try:  # other Unix systems: free pages, fewer than what could be reclaimed
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            where = "free physical pages (sysconf)"
        except (AttributeError, ValueError, OSError):
            return None
    room = _cgroup_room()
    if room is not None and room < avail:
        avail, where = room, "the memory limit of this process's cgroup"
    return int(avail), where


# --- the check -------------------------------------------------------------------------------------

def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"


def _crop_that_fits(cfg: dict, num_classes: int, model, room: int, batch: int, crop) -> list[int] | None:
    """The largest crop of the same aspect (sides multiples of 32) whose step fits in ``room`` at
    ``batch``. Activations grow linearly with H*W for most heads and quadratically for the non-local
    kind, so each candidate is counted again."""
    est = estimate_training_step(cfg, num_classes, batch, crop, model)
    fixed = est.fixed * ALLOCATOR_SLACK
    scale = min(0.95, math.sqrt(max(room - fixed, 0) / max(est.peak - fixed, 1)))
    tried = set()
    while len(tried) < 15 and scale > 0:
        cand = tuple(max(32, int(c * scale) // 32 * 32) for c in crop)
        if cand not in tried:
            tried.add(cand)
            if estimate_training_step(cfg, num_classes, batch, cand, model).peak <= room:
                return list(cand)
            if cand == (32, 32):
                return None
        scale *= 0.85
    return None


_ESTIMATES: dict[str, StepMemory] = {}


class WouldRunOutOfMemory(ValueError):
    """A training step needs more memory than the device has (a value of the config is too large here)."""


def check_training_memory(cfg: dict, num_classes: int, device: torch.device, processes: int = 1) -> StepMemory | None:
    """Stop before the first step when one training step of ``cfg`` needs more memory than ``device``
    has (``processes`` of them share it: DDP on one machine's CPU). Raises WouldRunOutOfMemory with the
    estimate, what is available and the largest batch / crop that fits; returns the estimate, or None
    when the device cannot say how much it has."""
    got = available_bytes(device)
    if got is None:
        return None
    avail, where = got
    key = json.dumps([cfg["backbone"], cfg["head"], cfg.get("model"), cfg.get("loss"), cfg.get("optimizer"),
                      cfg["trainer"]["batch_size"], cfg["trainer"].get("num_workers"), cfg["dataset"]["crop_size"],
                      num_classes], sort_keys=True, default=str)
    model = None
    if key not in _ESTIMATES:  # counting takes about a second; the tests train the same tiny model often
        try:
            model = _build_on_meta(cfg, num_classes)
            _ESTIMATES[key] = estimate_training_step(cfg, num_classes, model=model)
        except Exception as e:  # a module that cannot run on meta: say so, and let the run start
            warnings.warn(f"trainer.check_memory: could not estimate the memory of a training step "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); starting without the check",
                          stacklevel=2)
            return None
    est = _ESTIMATES[key]
    need = est.peak * processes
    if need <= avail:
        return est
    t = cfg["trainer"]
    model = model or _build_on_meta(cfg, num_classes)
    room = avail // processes
    fixed = est.fixed * ALLOCATOR_SLACK
    per_sample = (est.peak - fixed) / est.batch_size
    fits = int((room - fixed) // per_sample) if room > fixed else 0
    crop = list(est.crop_size)
    shares = f" for each of {processes} processes" if processes > 1 else ""
    lines = [f"out of memory ahead: one training step needs about {_gib(need)}{shares} (weights "
             f"{_gib(est.weights)}, gradients {_gib(est.gradients)}, optimizer state {_gib(est.optimizer)}, "
             f"activations {_gib(est.activations)} for trainer.batch_size={est.batch_size} of dataset.crop_size="
             f"[{crop[0]},{crop[1]}], data loading {_gib(est.data)}, a quarter more for the allocator), but the "
             f"{device.type.upper()} has {_gib(avail)} available ({where}), so the system would kill the run "
             f"part-way."]
    options = []
    if fits >= 1:
        effective = est.batch_size * int(t.get("grad_accum", 1) or 1)
        divisor = max(b for b in range(1, min(fits, effective) + 1) if effective % b == 0)
        if divisor != fits:
            options.append(f"trainer.batch_size={fits}")
        options.append(f"trainer.batch_size={divisor} with trainer.grad_accum={effective // divisor} (the same "
                       f"effective batch of {effective})")
    smaller = _crop_that_fits(cfg, num_classes, model, room, est.batch_size, crop)
    if smaller:
        options.append(f"'dataset.crop_size=[{smaller[0]},{smaller[1]}]' at this batch")
    elif fits < 1:
        one = _crop_that_fits(cfg, num_classes, model, room, 1, crop)
        if one:
            options.append(f"trainer.batch_size=1 with 'dataset.crop_size=[{one[0]},{one[1]}]'")
    if options:
        lines.append("What fits: " + ", or ".join(options) + ".")
    else:
        lines.append("Not even one small crop fits: free memory, or train on a device with more.")
    lines.append("Set trainer.check_memory=false to start anyway.")
    raise WouldRunOutOfMemory(" ".join(lines))
