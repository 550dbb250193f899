"""Attention pictures from the entry points: eval.py visualize.* and TensorBoard during training."""

import glob
import os

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_eval, run_train


@pytest.fixture(scope="module")
def cc_run(tiny_root, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("cc"))
    run_train([*TINY, "head=cc", "head.channels=16", f"dataset.root={tiny_root}", "trainer.max_iters=2",
               "trainer.val_interval=2", "visualize.points=[[10,20],[40,100]]", f"hydra.run.dir={run}"])
    return run


def test_validation_writes_attention_to_tensorboard(cc_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(cc_run, size_guidance={"images": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["images"] if t.startswith("attention/")]
    assert tags, acc.Tags()["images"]
    img = acc.Images(tags[0])[-1]
    assert img.height == 64 and img.width >= 2 * 128  # one panel per point, each the image's size


def test_eval_writes_attention_pngs(cc_run, tiny_root, tmp_path):
    out = tmp_path / "pics"
    run_eval([f"checkpoint={os.path.join(cc_run, 'checkpoints', 'last.pt')}", f"dataset.root={tiny_root}",
              "num_workers=0", "progress=false", "visualize.points=[[10,20],[40,100]]", f"visualize.out_dir={out}",
              f"hydra.run.dir={tmp_path / 'eval'}"])
    pngs = sorted(glob.glob(str(out / "*.png")))
    assert len(pngs) == 2  # the first two validation images, one attention module (the head's cc)
    for p in pngs:
        a = np.array(Image.open(p))
        assert a.shape[0] >= 64 and a.shape[1] >= 2 * 128 and a.shape[2] == 3
