"""Datasets (plain torch Datasets), label tables, albumentations pipelines, the synthetic generator."""

from __future__ import annotations

import random

import numpy as np
import torch

from . import synthetic
from .cityscapes import CityscapesDataset, SegmentationDataset
from .transforms import build_train_transform, build_val_transform

DATASETS = {"mini": CityscapesDataset, "cityscapes": CityscapesDataset}

__all__ = ["CityscapesDataset", "SegmentationDataset", "build_dataset", "build_train_transform",
           "build_val_transform", "seed_worker", "DATASETS"]


def build_dataset(name: str, root: str, split: str, transform=None):
    """The dataset ``name`` (mini, cityscapes) at ``root``; the embedded one is generated if missing."""
    if name not in DATASETS:
        raise ValueError(f"dataset.name={name!r} is not a known dataset; choices: {', '.join(DATASETS)}")
    if name == "mini":
        synthetic.ensure(root)
    return DATASETS[name](root, split, transform)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give numpy/random a per-worker seed.

    torch seeds each worker differently (base_seed + worker_id) but numpy and Python's ``random``
    would otherwise start identical in every forked worker and repeat the same augmentation;
    albumentations' Compose draws from its own generator, which we reseed from the same value.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    ds = info.dataset if info is not None else None
    tf = getattr(ds, "transform", None)
    if tf is not None and hasattr(tf, "set_random_seed"):
        tf.set_random_seed(seed)
