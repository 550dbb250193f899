"""Datasets (plain torch Datasets), label tables, albumentations pipelines, the synthetic generator."""

from __future__ import annotations

import contextlib
import os
import random
import signal

import numpy as np
import torch

from . import synthetic
from .ade20k import ADE20KDataset
from .base import SegmentationDataset, label_table
from .check import DatasetError, check_dataset
from .cityscapes import CityscapesDataset
from .folder import FolderDataset
from .transforms import build_train_transform, build_val_transform

DATASETS = {"mini": CityscapesDataset, "cityscapes": CityscapesDataset, "ade20k": ADE20KDataset,
            "folder": FolderDataset}

__all__ = ["ADE20KDataset", "CityscapesDataset", "FolderDataset", "SegmentationDataset", "build_dataset", "label_table",
           "build_train_transform", "build_val_transform", "seed_worker", "DATASETS", "DatasetError", "check_dataset"]


def build_dataset(name: str, root: str, split: str | None, transform=None, **options):
    """The dataset ``name`` (mini, cityscapes, ade20k, folder) at ``root``; the embedded one is generated
    if missing. ``options`` are the dataset config's other keys: ``folder`` reads ``classes``,
    ``image_dir``, ``mask_dir`` (null: images only), ``mask_suffix`` and ``ignore_index``; the rest are ignored here."""
    if name not in DATASETS:
        raise ValueError(f"dataset.name={name!r} is not a known dataset; choices: {', '.join(DATASETS)}")
    if name == "mini":
        synthetic.ensure(root)
    if name == "folder":
        image_dir, mask_dir = options.get("image_dir", "images"), options.get("mask_dir", "masks")
        fraction, part = options.get("val_fraction"), None
        if fraction is not None:  # one folder, split in two: <root>/<image_dir> without train/ val/
            train_split, val_split = options.get("train_split", "train"), options.get("val_split", "val")
            if split not in (train_split, val_split):
                raise ValueError(f"split {split!r}: dataset.val_fraction={fraction} splits {root!r} into "
                                 f"{train_split!r} and {val_split!r} only")
            part = "val" if split == val_split else "train"
            found = [s for s in (train_split, val_split) if os.path.isdir(os.path.join(root, image_dir, s))]
            if found:
                raise ValueError(f"dataset.val_fraction={fraction} splits {os.path.join(root, image_dir)!r} itself, "
                                 f"but it has the sub-folder(s) {', '.join(found)}: set dataset.val_fraction=null "
                                 f"to train and validate on them")
            split = None
        try:
            return FolderDataset(os.path.join(root, image_dir, split or ""),
                                 os.path.join(root, mask_dir, split or "") if mask_dir else None,
                                 options.get("classes"), transform, options.get("mask_suffix", ".png"),
                                 options.get("ignore_index"), options.get("palette"), fraction, part,
                                 options.get("split_seed", 0))
        except FileNotFoundError as e:  # the key to change, first
            where = "does not exist" if not os.path.isdir(root) else "holds no images"
            raise FileNotFoundError(f"dataset.root={root!r} {where} for split {split!r}: {e}") from None
    return DATASETS[name](root, split, transform)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give numpy/random a per-worker seed.

    torch seeds each worker differently (base_seed + worker_id) but numpy and Python's ``random``
    would otherwise start identical in every forked worker and repeat the same augmentation;
    albumentations' Compose draws from its own generator, which we reseed from the same value.
    """
    # A signal for the whole job is the main process's to handle: it stops the run cleanly
    # (segattn.engine.stopping) and shuts the workers down itself. A worker killed by it first would
    # fail the loader before last.pt is written (or, under torchrun, bury the line saying a rank was
    # lost under tracebacks). So workers leave the process group, which Ctrl-C and torchrun signal
    # (killpg), and ignore SIGINT and SIGUSR1 (Slurm's --signal=USR1@<s> reaches every process of a
    # step). SIGTERM still ends them: the loader and multiprocessing end leftover workers with it, and
    # a worker whose main process is gone leaves by itself.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    ds = info.dataset if info is not None else None
    tf = getattr(ds, "transform", None)
    if tf is not None and hasattr(tf, "set_random_seed"):
        tf.set_random_seed(seed)
