"""Start-up checks and records, run before the first iteration: what would otherwise fail hours in.

- ``dataset.check=true``: every sample of the train and val splits is loaded once and every bad
  file is listed in one error (without it, each sample is still checked when it is loaded);
- memory: one training step, counted on the ``meta`` device, against what the device has
  (``trainer.check_memory``; segattn/engine/memory.py);
- free disk space for the checkpoints the run will keep (writability: ``trainer.check_writable``);
- ``run_info.json``: the seed, the package versions and the git commit the run was started with.
"""

from __future__ import annotations

import datetime
import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

import cv2
import numpy as np
import torch

from ..config import TrainConfig, TrainerConfig
from ..data.check import check_dataset, class_pixels
from .logging import write_json
from .memory import check_training_memory

# Room for what a run writes besides checkpoints (TensorBoard events, metrics, predictions shown).
MARGIN_BYTES = 64 * 2**20


def preflight_checks(cfg: dict | TrainConfig, run_dir: str, train_set, val_set, model: torch.nn.Module, device=None,
                     processes: int = 1) -> dict:
    """The start-up checks of ``train``, then ``run_info.json``; returns what was recorded. ``model``: the
    one set-up built, whose checkpoints the free space must hold.

    Called by the main process only: the scan reads the whole dataset once, the disk checks
    concern the directory only it writes to, and the memory check (on ``device``, shared by
    ``processes`` processes) stands for every rank's device.
    """
    cfg = TrainConfig.from_dict(cfg)
    t = cfg.trainer
    if cfg.dataset.get("check"):
        n = check_dataset({"train": train_set, "val": val_set}, workers=t.num_workers,
                          progress=t.progress, report=os.path.join(run_dir, "dataset_check.txt"))
        print(f"dataset.check: all {n} samples of the train and val splits can be used", file=sys.stderr)
        print(f"dataset.check: labelled pixels per class\n{class_pixels({'train': train_set, 'val': val_set})}",
              file=sys.stderr)
    if device is not None and t.check_memory and cfg.dataset.get("crop_size"):
        check_training_memory(cfg.to_dict(), len(train_set.classes), device, processes)
    # best.safetensors holds the weights once more, beside the checkpoints
    weights = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    check_free_space(run_dir, checkpoint_bytes(model, cfg.optimizer.name), checkpoint_copies(t), weights)
    return write_run_info(run_dir, cfg)


# --- the numbers of the config ----------------------------------------------------------------------

def _number_rules(cfg: TrainConfig) -> list[tuple[str, object, str, bool]]:
    """``(key, value, what it must be, whether it is)`` for every numeric key of the training config."""
    t, o, s, m, loss = cfg.trainer, cfg.optimizer, cfg.scheduler, cfg.model, cfg.loss

    def whole(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def real(v, low, high=math.inf, open_low=False):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) and \
            (v > low if open_low else v >= low) and v <= high

    rules = [
        ("trainer.max_iters", t.max_iters, "a whole number >= 1 (iterations to train; eval.py evaluates a "
                                           "checkpoint without training)", whole(t.max_iters, 1)),
        ("trainer.batch_size", t.batch_size, "a whole number >= 1 (images per process and step)",
         whole(t.batch_size, 1)),
        ("trainer.grad_accum", t.grad_accum, "a whole number >= 1", whole(t.grad_accum, 1)),
        ("trainer.num_workers", t.num_workers, "a whole number >= 0", whole(t.num_workers, 0)),
        ("trainer.val_interval", t.val_interval, "a whole number >= 1 (the run also validates at its end)",
         whole(t.val_interval, 1)),
        ("trainer.log_interval", t.log_interval, "a whole number >= 1", whole(t.log_interval, 1)),
        ("trainer.ckpt_interval", t.ckpt_interval, "a whole number >= 0 (0: no iter_<N>.pt)",
         whole(t.ckpt_interval, 0)),
        ("trainer.keep_ckpts", t.keep_ckpts, "a whole number >= 0 (0: keep all)", whole(t.keep_ckpts, 0)),
        ("trainer.ckpt_interval_min", t.ckpt_interval_min, "a number of minutes >= 0 (0: no timed last.pt)",
         real(t.ckpt_interval_min, 0)),
        ("trainer.dist_timeout_s", t.dist_timeout_s, "a number of seconds > 0",
         real(t.dist_timeout_s, 0, open_low=True)),
        ("optimizer.lr", o.lr, "a learning rate >= 0 (the recipes use 0.01)", real(o.lr, 0)),
        ("optimizer.weight_decay", o.weight_decay, "a number >= 0", real(o.weight_decay, 0)),
        ("scheduler.min_lr", s.min_lr, "a number >= 0", real(s.min_lr, 0)),
        ("scheduler.warmup_iters", s.warmup_iters, "a whole number >= 0", whole(s.warmup_iters, 0)),
        ("scheduler.warmup_ratio", s.warmup_ratio, "a number in [0, 1]", real(s.warmup_ratio, 0, 1)),
        ("model.aux_head.weight", m.aux_head.weight, "a number >= 0 (0: no auxiliary head)",
         real(m.aux_head.weight, 0)),
        ("loss.ohem_thresh", loss.ohem_thresh, "a probability in (0, 1]", real(loss.ohem_thresh, 0, 1, open_low=True)),
        ("loss.ohem_min_kept", loss.ohem_min_kept, "a whole number >= 0", whole(loss.ohem_min_kept, 0)),
    ]
    if o.name == "sgd":
        rules.append(("optimizer.momentum", o.momentum, "a number in [0, 1)", real(o.momentum, 0) and o.momentum < 1))
    else:
        rules.append(("optimizer.betas", o.betas, "two numbers in [0, 1)", isinstance(o.betas, (list, tuple))
                      and len(o.betas) == 2 and all(real(b, 0) and b < 1 for b in o.betas)))
    if s.name == "poly":
        rules.append(("scheduler.power", s.power, "a number > 0", real(s.power, 0, open_low=True)))
    if t.grad_clip is not None:
        rules.append(("trainer.grad_clip", t.grad_clip, "a gradient norm > 0, or null",
                      real(t.grad_clip, 0, open_low=True)))
    if t.stop_at is not None:
        rules.append(("trainer.stop_at", t.stop_at, "a whole number >= 1, or null", whole(t.stop_at, 1)))
    return rules


def check_numbers(cfg: dict | TrainConfig) -> None:
    """Refuse a numeric key out of its range, naming the key, before anything is built (a batch of 0
    would otherwise end in a ZeroDivisionError, a negative learning rate in the optimizer's message
    that does not say which key). Every bad key is listed at once."""
    cfg = TrainConfig.from_dict(cfg)
    bad = [f"{key}={value!r}: expected {what}" for key, value, what, ok in _number_rules(cfg) if not ok]
    if bad:
        raise ValueError("; ".join(bad))


# --- disk space ----------------------------------------------------------------------------------

def checkpoint_bytes(model: torch.nn.Module, optimizer: str) -> int:
    """About how large one checkpoint of ``model`` trained with ``optimizer`` (``optimizer.name``) is:
    the model's tensors plus the optimizer's state (SGD's momentum is one copy of the parameters,
    AdamW's two moments are two)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    tensors = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    moments = {"sgd": 1, "adamw": 2}.get(optimizer, 2)
    return tensors + moments * params


def checkpoint_copies(trainer: dict | TrainerConfig) -> int:
    """How many checkpoint files a run holds at its peak: last.pt, best.pt, the iter_<N>.pt it keeps
    (``trainer.keep_ckpts``, or all of them when that is 0) and the one being written."""
    trainer = TrainerConfig.from_dict(trainer, "trainer")
    interval = int(trainer.ckpt_interval or 0)
    written = int(trainer.max_iters) // interval if interval else 0
    keep = int(trainer.keep_ckpts or 0)
    return 3 + (min(keep, written) if keep else written)


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_free_space(run_dir: str, checkpoint_size: int, copies: int, extra: int = 0) -> None:
    """Fail now, not at the first checkpoint hours from now, when the disk cannot hold the run's
    checkpoints (and ``extra`` bytes more: ``best.safetensors``). Checkpoints already in ``run_dir`` (a
    resumed run) are replaced, so they count as space."""
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    existing = sum(os.path.getsize(f) for f in glob.glob(os.path.join(ckpt_dir, "*.pt"))
                   + glob.glob(os.path.join(ckpt_dir, "*.safetensors")))
    need = max(0, checkpoint_size * copies + extra - existing) + MARGIN_BYTES
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise OSError(
            f"only {_size(free)} free on the disk of the run directory {run_dir}, but this run needs about "
            f"{_size(need)}: it holds up to {copies} checkpoints of about {_size(checkpoint_size)} at once "
            f"(last.pt, best.pt, {copies - 3} iter_<N>.pt and the one being written). Free some space, set "
            f"hydra.run.dir to a larger disk, or keep fewer checkpoints (trainer.keep_ckpts, trainer.ckpt_interval).")


# --- what the run was started with ----------------------------------------------------------------

def versions() -> dict:
    """Python and the packages that change results (a missing one is "not installed")."""
    def dist(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    # From the installed metadata, not by importing: torchvision alone takes a second to import.
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": dist("torchvision"),
            "albumentations": dist("albumentations"), "hydra-core": dist("hydra-core"),
            "numpy": np.__version__, "opencv": cv2.__version__, "cuda": torch.version.cuda or "none",
            "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"}


def git_state(path: str | None = None) -> dict:
    """The commit of the checkout that holds ``path`` (default: this package's source) and whether
    tracked files differ from it. ``{"commit": "unknown", "dirty": None}`` when that is not a git
    checkout (an installed package, a tarball) or git is not installed."""
    root = os.path.realpath(path or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()

    try:
        # Only the checkout whose top is this folder: an installed copy inside some other repository
        # (a virtualenv in a project) must not report that repository's commit.
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != root:
            return {"commit": "unknown", "dirty": None}
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def write_run_info(run_dir: str, cfg: dict | TrainConfig) -> dict:
    """Write ``<run_dir>/run_info.json`` (atomically) and return it. A resumed run keeps the earlier
    starts under ``earlier``: a run continued with other code or packages says so."""
    cfg = TrainConfig.from_dict(cfg)
    info = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seed": cfg.seed,
            "command": list(sys.argv),
            "resume": cfg.resume,
            "versions": versions(),
            "git": git_state(),
            "host": platform.node(),
            "platform": platform.platform()}
    path = os.path.join(run_dir, "run_info.json")
    try:
        with open(path) as f:
            old = json.load(f)
        info["earlier"] = old.pop("earlier", []) + [old]
    except (OSError, ValueError, AttributeError):
        pass
    write_json(info, path)
    return info
