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
    # One panel per point, each the image's size, under the title and the points' labels, the
    # colour bar at the right.
    from segattn.viz import COLORBAR_WIDTH

    assert img.height > 64 and img.width == 2 * 128 + 4 + COLORBAR_WIDTH


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


def test_eval_skips_a_visualize_point_outside_a_smaller_image(cc_run, tmp_path):
    """A point that fits one image of a split but not another is skipped for that image, with a
    warning naming its file; the evaluation and the other pictures go on."""
    ckpt = os.path.join(cc_run, "checkpoints", "last.pt")
    with pytest.warns(UserWarning, match=r"\[\[100, 300\]\] lie outside .*frankfurt.*\.png \(64x128\); skipped"):
        run_eval([f"checkpoint={ckpt}", "visualize.points=[[2,3],[100,300]]", f"visualize.out_dir={tmp_path / 'vis'}",
                  "progress=false", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert os.path.isfile(tmp_path / "eval" / "eval.json")
    assert any(f.endswith(".png") for f in os.listdir(tmp_path / "vis"))


def test_attention_pictures_script_trains_through_the_library(tiny_root, tmp_path, monkeypatch):
    """scripts/attention_pictures.py trains each head briefly with segattn.engine.train (no train.py) and draws it."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("attention_pictures", os.path.join(REPO, "scripts",
                                                                                     "attention_pictures.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(tmp_path)  # the script works from the repository; the test's folder comes back after it
    out, runs = tmp_path / "pics", tmp_path / "runs"
    script.main(["--heads", "se", "--iters", "1", "--out", str(out), "--runs", str(runs), "--threads", "1",
                 *TINY, f"dataset.root={tiny_root}"])
    assert os.path.isfile(runs / "se" / "checkpoints" / "last.pt")
    pictures = sorted(os.listdir(out))
    assert pictures and all(p.startswith("attention_se_") and p.endswith(".png") for p in pictures), pictures
