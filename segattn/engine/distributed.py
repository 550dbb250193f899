"""torch.distributed in a dozen lines (nanoGPT's shape): torchrun or Slurm tasks, one process per device.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; Slurm tasks started by Hydra's submitit
launcher get the same variables from ``submitit.helpers.TorchDistributedEnvironment``. Backend
``nccl`` on GPUs, ``gloo`` on the CPU (so the distributed path is tested on CPU-only machines).
"""

from __future__ import annotations

import datetime
import os
import re
import time

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """How many processes the launcher started (1 outside torchrun/Slurm)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ and "SUBMITIT_EXECUTOR" in os.environ:
        return int(os.environ["SLURM_NTASKS"])
    return 1


def env_rank() -> int:
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SUBMITIT_EXECUTOR" in os.environ and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return 0


def init(device_name: str | None = "auto", timeout_s: float = 1800) -> tuple[int, int, torch.device]:
    """Join the process group when launched with several processes; returns (rank, world_size, device).

    ``timeout_s`` bounds every collective: a rank that died makes the others fail with a message
    after at most that long instead of hanging forever (torchrun also tears the job down).
    """
    world = env_world_size()
    if world > 1 and "RANK" not in os.environ:  # a Slurm task: export torchrun's variables
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_name in (None, "auto"):
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = resolve_device(device_name, "trainer.device")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)  # one GPU per process
    check_device(device, f"trainer.device={device_name}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        backend, timeout = "nccl" if device.type == "cuda" else "gloo", datetime.timedelta(seconds=timeout_s)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            # torchrun's workers share the agent's key-value store, which outlives a restart: the keys the
            # last attempt's process group wrote (each rank's listening address) are still there, so a
            # restarted rank would read its dead peer's old address and fail with "Gloo connectFullMesh
            # ... Connection refused". Each attempt gets keys of its own.
            store, rank, _ = next(dist.rendezvous("env://", timeout=timeout))
            dist.init_process_group(backend, store=dist.PrefixStore(f"segattn/attempt_{attempt}", store),
                                    rank=rank, world_size=world, timeout=timeout)
        global _STORE
        _STORE = dist.distributed_c10d._get_default_store()
    rank = dist.get_rank() if world > 1 else 0
    return rank, world, device


def resolve_device(name: str | None, key: str = "device") -> torch.device:
    """``device: auto`` is the GPU when there is one; otherwise the named device."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{key}={name}: not a device; use auto, cpu, cuda or cuda:<index>") from None
    return check_device(device, f"{key}={name}")


def check_device(device: torch.device, key: str) -> torch.device:
    """A CUDA device that this machine has, or ValueError naming ``key`` and what to set instead."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key}, but PyTorch finds no CUDA GPU on this machine (torch.cuda.is_available() is "
                             f"False); use device auto (the GPU when there is one, else the CPU) or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{key}, but this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use auto or cuda:0..{torch.cuda.device_count() - 1}")
    return device


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s value of ``obj`` on every rank (e.g. the run directory rank 0 chose)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BN running statistics, EMA bases).

    Without SyncBN (there is none on the CPU) each rank's BN statistics drift apart during
    training; broadcasting them before validation and checkpoints makes every rank evaluate the
    model that is checkpointed.
    """
    if is_dist():
        for b in module.buffers():
            dist.broadcast(b, src)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    global _STORE
    _STORE = None  # released with the group, not at the interpreter's exit
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_STORE = None  # the process group's key-value store: where the ranks find each other after a failure

# What a collective says when a peer process is gone (gloo: its socket closed; NCCL: the communicator
# aborted), and the DataLoader when the job's end reached its workers first. Only a hint: the ranks
# that answer in the store decide (lost_ranks), so a worker's own crash is still reported as such.
_PEER_GONE = re.compile(r"Connection (reset|closed|refused)|Broken pipe|pair\.cc|NCCL|Socket Timeout|"
                        r"DataLoader worker \(pid")


def peer_gone(error: BaseException) -> bool:
    """Whether ``error`` (raised in the training loop under DDP) says that another rank is gone."""
    if isinstance(error, (getattr(dist, "DistBackendError", ()), getattr(dist, "DistNetworkError", ()))):
        return True
    return isinstance(error, RuntimeError) and bool(_PEER_GONE.search(str(error)))


def lost_ranks(wait_s: float = 2.0) -> list[int] | None:
    """After a collective failed: the ranks that are gone. Every surviving rank writes its number into the
    store and waits up to ``wait_s`` for the others; those that never answer are the lost ones. None
    when the store cannot be reached (it lived in a lost process)."""
    if _STORE is None or not dist.is_initialized():
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        _STORE.set_timeout(datetime.timedelta(seconds=wait_s))
        _STORE.set(f"segattn/alive/{rank}", "1")
        deadline = time.monotonic() + wait_s
        while True:
            missing = [r for r in range(world) if not _STORE.check([f"segattn/alive/{r}"])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.05)
    except (RuntimeError, OSError):
        return None


def abandon() -> None:
    """Leave a broken process group without another collective (what ``cleanup`` may try)."""
    global _STORE
    _STORE = None
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (RuntimeError, OSError):
            pass


def revert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm -> BatchNorm2d (same parameters and statistics): PyTorch has no SyncBN on the CPU."""
    out = module
    if isinstance(module, torch.nn.SyncBatchNorm):
        out = torch.nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        out.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out
