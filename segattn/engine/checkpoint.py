"""Checkpoints: written to ``<name>.pt.tmp`` and renamed, loaded with ``weights_only=True`` only; the
best model's weights also as safetensors (``segattn.engine.weights``), which load without unpickling."""

from __future__ import annotations

import glob
import os
import pickle
import random
import re
import shutil
import sys

import numpy as np
import torch

from ..io import atomic_write
from ..models import build_model_from_config
from ..plugins import require_head
from .weights import is_safetensors, load_weights

REQUIRED_KEYS = ("model", "iter", "config")


def first_nonfinite(weights: dict) -> str | None:
    """The name of the first floating-point tensor in ``weights`` holding NaN or inf, or None."""
    for name, value in weights.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def save_checkpoint(state: dict, path: str) -> None:
    """Write ``state`` atomically: a kill during the write leaves the previous file intact.

    The data is written to ``<path>.tmp``, flushed to disk and renamed over ``path``, so ``path`` is
    always either the old or the new checkpoint, never a mixture. Weights that are NaN or infinite
    (a run that diverged within its last step) are refused, so the checkpoint on disk stays a good one.
    """
    bad = first_nonfinite(state.get("model") or {})
    if bad is not None:
        raise FloatingPointError(
            f"not writing {path}: the model's {bad} holds NaN or infinite values at iteration {state.get('iter')}, "
            f"so training has diverged; the checkpoints already written are kept. Lower optimizer.lr or set "
            f"trainer.grad_clip, then resume from the last good checkpoint (resume=PATH).")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        with atomic_write(path, fsync=True) as f:
            torch.save(state, f)
    except BaseException as e:
        # torch's zip writer reports a full disk as a RuntimeError; both mean the write failed.
        if isinstance(e, (OSError, RuntimeError)):
            try:
                free = f"{shutil.disk_usage(directory).free / 2**30:.2f} GiB are free in {directory}"
            except OSError:
                free = f"{directory} cannot be examined"
            raise OSError(f"cannot write the checkpoint {path} ({type(e).__name__}: {str(e)[:200]}); {free}. "
                          f"The previous {os.path.basename(path)}, if any, is intact.") from e
        raise


def load_checkpoint(path: str, key: str = "checkpoint") -> dict:
    """Load one of our checkpoints: a ``.pt`` with ``weights_only=True`` (a crafted pickle cannot run code),
    or the ``best.safetensors`` weights a run writes, which are not unpickled at all. ``key``: the config
    key the path came from, named in the errors (``resume``, ``model.init_from``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}={path!r}: no such file")
    if is_safetensors(path):
        return load_weights(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a Python object: never a segattn checkpoint
        found = re.search(r"(unsupported GLOBAL|Unsupported global|Unsupported operand)[^\n]*", str(e))
        what = found.group(0).strip().rstrip(".") if found else type(e).__name__
        raise ValueError(
            f"{key}={path!r} holds Python objects, not only tensors and plain containers ({what}). Such a "
            f"file can run code when it is unpickled, so segattn refuses it (checkpoints are loaded with "
            f"weights_only=True); a segattn checkpoint never holds any.") from None
    except Exception as e:  # truncated file, not a torch file at all
        first = str(e).split(". ")[0][:200]  # torch's first sentence says what failed; the rest is generic advice
        raise ValueError(f"{key}={path!r} cannot be loaded as a segattn checkpoint "
                         f"(truncated, or not written by segattn): {type(e).__name__}: {first}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else None
        got = (f"a dict of {len(keys)} keys ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})"
               if keys is not None else type(ckpt).__name__)
        raise ValueError(f"{key}={path!r} is not a segattn checkpoint: expected a dict with keys "
                         f"{list(REQUIRED_KEYS)}, got {got}. ImageNet or open-mmlab backbone weights go to "
                         f"backbone.pretrained=PATH.")
    return ckpt


def model_from_checkpoint(path: str, ckpt: dict | None = None, num_classes: int | None = None):
    """``(model, checkpoint)``: the model a segattn checkpoint holds, rebuilt from the config stored in
    it (without the ImageNet weights, which need not exist here) with its weights loaded; on the CPU,
    in training mode as built. ``ckpt``: the checkpoint at ``path`` if already loaded; ``num_classes``:
    the count to use when the config records neither ``num_classes`` nor ``classes``. The one way eval.py,
    ``segattn.load``, the scripts and the benchmarks turn a checkpoint into a model."""
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    cfg = ckpt["config"]
    num_classes = int(cfg.get("num_classes", len(cfg.get("classes") or [])) or num_classes or 0)
    if not num_classes:
        raise ValueError(f"checkpoint={path!r} records neither num_classes nor classes in its config")
    require_head(cfg, f"checkpoint={path!r}")  # a plugin's head: say which module to name, not a KeyError
    model = build_model_from_config(cfg, num_classes, pretrained=False)
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def clean_stale_tmp(directory: str) -> list[str]:
    """Remove half-written ``*.pt.tmp`` files left by a run that was killed during a write."""
    stale = sorted(glob.glob(os.path.join(directory, "*.pt.tmp")))
    for f in stale:
        os.remove(f)
        print(f"removed {f}: half-written by a run stopped during a checkpoint write "
              f"(the checkpoint it was replacing is intact)", file=sys.stderr)
    return stale


def prune_checkpoints(directory: str, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` ``iter_<N>.pt`` of ``directory`` (``trainer.keep_ckpts``; 0
    keeps them all); returns the paths removed. ``last.pt`` and ``best.pt`` are never touched."""
    if not keep:
        return []
    steps = sorted(int(f[5:-3]) for f in os.listdir(directory)
                   if f.startswith("iter_") and f.endswith(".pt") and f[5:-3].isdigit())
    removed = [os.path.join(directory, f"iter_{n}.pt") for n in steps[:-keep]]
    for path in removed:
        os.remove(path)
    return removed


def rng_state() -> dict:
    """Every random generator the loop uses, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
