"""Shared fixtures: a tiny generated dataset and one trained checkpoint for the whole session."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from segattn.data import synthetic

from segattn.cli import register_configs

# The config schemas (segattn/config.py) conf/*.yaml are composed against, so every composition in the
# tests is checked by them, and the run_name resolver of conf/train.yaml.
register_configs()

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
    # `make test` runs two pytest-xdist workers, one core's thread each (two OpenMP threads per worker
    # would wait on each other's descheduled partner); a plain `pytest` process uses both cores.
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """A small dataset in the Cityscapes layout (6 train / 2 val images of 64x128)."""
    root = str(tmp_path_factory.mktemp("data") / "tiny_cityscapes")
    synthetic.generate(root, size=(64, 128), splits={"train": ("aachen", 6), "val": ("frankfurt", 2)})
    return root


def _run_hydra_main(module_name: str, argv: list[str]):
    """Call an entry point's Hydra ``main()`` in-process with ``argv`` overrides; returns its return value."""
    import importlib

    from hydra.core.global_hydra import GlobalHydra

    entry = importlib.import_module(module_name)
    GlobalHydra.instance().clear()
    old = sys.argv
    sys.argv = [f"{module_name}.py", *argv]
    try:
        return entry.main()
    finally:
        sys.argv = old
        GlobalHydra.instance().clear()


def run_train(argv: list[str]):
    """train.py in-process; returns its return value (the final mIoU)."""
    return _run_hydra_main("train", argv)


@pytest.fixture(scope="session")
def trained_run(tiny_root, tmp_path_factory) -> str:
    """One 4-iteration run through train.py, shared by the end-to-end tests; returns its run dir."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=4", "trainer.val_interval=2",
               "trainer.log_interval=1", f"hydra.run.dir={run_dir}"])
    return run_dir


def run_eval(argv: list[str]):
    """eval.py in-process; returns its return value (the mIoU)."""
    return _run_hydra_main("eval", argv)

EXAMPLE_PLUGIN = os.path.join(REPO, "examples", "pooled_attention.py")


def forget_plugins() -> None:
    """Undo every plugin import of this process: their names leave the registries (the registry-wide
    tests and the README's heads table list the package's own heads only) and their modules are dropped."""
    from segattn import plugins
    from segattn.models.attention import ATTENTIONS
    from segattn.models.heads import HEADS

    for name in list(plugins._ORIGIN):
        ATTENTIONS.pop(name, None)
        HEADS.pop(name, None)
    for module in plugins._IMPORTED.values():
        sys.modules.pop(module.__name__, None)
    plugins._ORIGIN.clear()
    plugins._IMPORTED.clear()


@pytest.fixture
def example_plugin():
    """examples/pooled_attention.py imported (``pooled_nl`` registered) for one test, forgotten after it."""
    from segattn.plugins import import_plugins

    assert import_plugins([EXAMPLE_PLUGIN]) == ["pooled_nl"]
    yield EXAMPLE_PLUGIN
    forget_plugins()
