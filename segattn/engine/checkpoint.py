"""Checkpoints: written to ``<name>.pt.tmp`` and renamed, loaded with ``weights_only=True`` only."""

from __future__ import annotations

import glob
import os
import random

import numpy as np
import torch

REQUIRED_KEYS = ("model", "iter", "config")


def save_checkpoint(state: dict, path: str) -> None:
    """Write ``state`` atomically: a kill during the write leaves the previous file intact."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Load one of our checkpoints; ``weights_only=True`` so a crafted pickle cannot run code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint={path!r}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, not a torch file at all
        raise ValueError(f"checkpoint={path!r} cannot be loaded as a segattn checkpoint "
                         f"(truncated, or not written by segattn): {type(e).__name__}: {str(e)[:300]}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise ValueError(f"checkpoint={path!r} is not a segattn checkpoint: expected a dict with keys "
                         f"{list(REQUIRED_KEYS)}, got {sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__}")
    return ckpt


def clean_stale_tmp(directory: str) -> list[str]:
    """Remove half-written ``*.pt.tmp`` files left by a run that was killed during a write."""
    stale = glob.glob(os.path.join(directory, "*.pt.tmp"))
    for f in stale:
        os.remove(f)
    return stale


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
