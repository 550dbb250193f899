"""Shared fixtures: a tiny generated dataset and one trained checkpoint for the whole session."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from segattn.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny but real: ResNet-18 at width 16, 64x64 crops, a handful of 64x128 images.
TINY = [
    "backbone.width=16",
    "head.channels=32",
    "model.aux_head.channels=16",
    "dataset.crop_size=[64,64]",
    "trainer.batch_size=2",
    "trainer.num_workers=0",
    "trainer.progress=false",
]


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """A small dataset in the Cityscapes layout (6 train / 2 val images of 64x128)."""
    root = str(tmp_path_factory.mktemp("data") / "tiny_cityscapes")
    synthetic.generate(root, size=(64, 128), splits={"train": ("aachen", 6), "val": ("frankfurt", 2)})
    return root


def run_train(argv: list[str]):
    """Run train.py's Hydra main in-process with ``argv`` overrides; returns its return value."""
    from hydra.core.global_hydra import GlobalHydra

    import train

    GlobalHydra.instance().clear()
    old = sys.argv
    sys.argv = ["train.py", *argv]
    try:
        return train.main()
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def trained_run(tiny_root, tmp_path_factory) -> str:
    """One 4-iteration run through train.py, shared by the end-to-end tests; returns its run dir."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=4", "trainer.val_interval=2",
               "trainer.log_interval=1", f"hydra.run.dir={run_dir}"])
    return run_dir


def run_eval(argv: list[str]):
    """Run eval.py's Hydra main in-process with ``argv`` overrides; returns its return value (the mIoU)."""
    from hydra.core.global_hydra import GlobalHydra

    import eval as eval_entry

    GlobalHydra.instance().clear()
    old = sys.argv
    sys.argv = ["eval.py", *argv]
    try:
        return eval_entry.main()
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()
