"""Your own data: a folder trains at a crop that fits its images (dataset.crop_size=auto), splits itself
(dataset.val_fraction), colours its classes (dataset.palette, a readable default); a mistyped root of the
embedded dataset is an error, not a new dataset."""

import glob
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segattn.data import build_dataset
from segattn.data.folder import in_val_split
from segattn.data.labels import CITYSCAPES_PALETTE, readable_palette
from segattn.data.sizes import fit_crop

from conftest import TINY, run_eval, run_train

SMALL = [t for t in TINY if not t.startswith("dataset.crop_size")]
PALETTE = [[10, 20, 30], [200, 0, 0], [0, 200, 0]]


def _shapes(root, n=8, size=(64, 96), split=None, bad=None):
    """``n`` pictures of a rectangle and a circle on a background (classes bg, rect, circle), as
    <root>/images[/split]/<k>.png with <root>/masks[/split]/<k>.png, the data README's example."""
    rng = np.random.default_rng(0)
    h, w = size
    for k in range(n):
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y:y + h // 3, x:x + w // 3] = 1
        cv2.circle(mask, (int(rng.integers(w // 4, w)), int(rng.integers(h // 4, h))), h // 6, 2, -1)
        if bad is not None and k == bad:
            mask[0, 0] = 9
        image = (np.array([[40, 40, 40], [200, 60, 60], [60, 60, 200]], np.uint8)[mask.clip(0, 2)] +
                 rng.integers(0, 30, (h, w, 3))).astype(np.uint8)
        for kind, array in (("images", image), ("masks", mask)):
            path = os.path.join(root, kind, *([split] if split else []), f"{k:03d}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(array).save(path)
    return root


def test_a_folder_trains_at_its_images_size_splits_and_colours_itself(tmp_path, capsys):
    """As the data README types it, on one folder of 64x96 images with no train/ val/: the crop is the
    images' size (printed, and stored in the checkpoint), a quarter validates, the palette colours the
    TensorBoard pictures, the checkpoint and eval.py's colour exports."""
    root = _shapes(str(tmp_path / "shapes"), n=12)
    run = tmp_path / "run"
    run_train([*SMALL, "dataset=folder", f"dataset.root={root}", "dataset.classes=[bg,rect,circle]",
               "dataset.val_fraction=0.25", f"dataset.palette={PALETTE}".replace(" ", ""), "trainer.max_iters=1",
               "trainer.val_interval=1", f"hydra.run.dir={run}"])
    err = capsys.readouterr().err
    val = [os.path.basename(p) for p in sorted(glob.glob(f"{root}/images/*.png"))
           if in_val_split(os.path.basename(p), 0.25, 0)]
    assert 0 < len(val) < 12
    assert f"dataset.crop_size=auto: [64, 96] (the smallest height and width of {12 - len(val)} training images" in err
    assert f"dataset.val_fraction=0.25: {len(val)} of the 12 images in" in err and "are the val split" in err
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["dataset"]["crop_size"] == [64, 96] and ckpt["config"]["palette"] == PALETTE

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import io

    tb = EventAccumulator(str(run), size_guidance={"images": 0})
    tb.Reload()
    grid = np.array(Image.open(io.BytesIO(tb.Images("val/image_gt_pred")[-1].encoded_image_string)).convert("RGB"))
    truth = grid[:64, 96:192].reshape(-1, 3)  # image | ground truth | prediction
    assert {tuple(c) for c in np.unique(truth, axis=0)} <= {tuple(c) for c in PALETTE}

    out = tmp_path / "pred"
    run_eval([f"checkpoint={run / 'checkpoints' / 'last.pt'}", f"export_dir={out}", "export_format=color",
              f"hydra.run.dir={tmp_path / 'eval'}"])
    written = sorted(os.path.basename(p) for p in glob.glob(f"{out}/*_color.png"))
    assert written == [v.replace(".png", "_color.png") for v in val]  # eval.py validates on the same quarter
    colours = np.concatenate([np.array(Image.open(p).convert("RGB")).reshape(-1, 3) for p in glob.glob(f"{out}/*.png")])
    assert {tuple(c) for c in np.unique(colours, axis=0)} <= {tuple(c) for c in PALETTE}


def test_val_fraction_is_seeded_and_stable_when_files_are_added(tmp_path):
    root = _shapes(str(tmp_path / "d"), n=40, size=(8, 8))
    options = dict(classes=["bg", "rect", "circle"], val_fraction=0.2)
    val = {os.path.basename(p) for p in build_dataset("folder", root, "val", **options).images}
    train = {os.path.basename(p) for p in build_dataset("folder", root, "train", **options).images}
    assert not val & train and len(val | train) == 40 and 3 <= len(val) <= 14
    _shapes(str(tmp_path / "more"), n=60, size=(8, 8))
    for kind in ("images", "masks"):
        for p in glob.glob(str(tmp_path / "more" / kind / "*.png"))[40:]:
            os.replace(p, os.path.join(root, kind, "new_" + os.path.basename(p)))
    val2 = {os.path.basename(p) for p in build_dataset("folder", root, "val", **options).images}
    assert {v for v in val2 if not v.startswith("new_")} == val and len(val2) > len(val)  # none moved
    other = {os.path.basename(p) for p in build_dataset("folder", root, "val", split_seed=1, **options).images}
    assert other != val2


def test_val_fraction_refuses_what_it_cannot_split(tmp_path):
    root = _shapes(str(tmp_path / "d"), n=4, size=(8, 8), split="train")
    with pytest.raises(ValueError, match=r"dataset.val_fraction=0.2 splits .*images' itself, but it has the "
                                         r"sub-folder\(s\) train: set dataset.val_fraction=null"):
        build_dataset("folder", root, "train", classes=["a", "b", "c"], val_fraction=0.2)
    flat = _shapes(str(tmp_path / "flat"), n=4, size=(8, 8))
    with pytest.raises(ValueError, match=r"dataset.val_fraction=1.5: expected a fraction between 0 and 1"):
        build_dataset("folder", flat, "val", classes=["a", "b", "c"], val_fraction=1.5)
    # Four files and a small fraction: the hash may pick none, yet one validates and three train.
    val = build_dataset("folder", flat, "val", classes=["a", "b", "c"], val_fraction=0.01)
    assert len(val) == 1 and len(build_dataset("folder", flat, "train", classes=["a", "b", "c"], val_fraction=0.01)) == 3


def test_custom_classes_get_a_readable_palette_not_cityscapes_colours(tmp_path):
    root = _shapes(str(tmp_path / "d"), n=2, size=(8, 8), split="train")
    ds = build_dataset("folder", root, "train", classes=["bg", "rect", "circle"])
    assert ds.palette.tolist() == readable_palette(3).tolist()
    assert not (ds.palette == CITYSCAPES_PALETTE[:3]).all(1).any()
    many = readable_palette(40)
    assert len({tuple(c) for c in many}) == 40 and not (many.max(1) < 60).any()  # distinct, none near black
    assert build_dataset("folder", root, "train", classes=["a", "b", "c"], palette=PALETTE).palette.tolist() == PALETTE
    with pytest.raises(ValueError, match=r"dataset.palette=\[\[1, 2, 3\]\]: expected one \[R, G, B\] colour "
                                         r"\(whole numbers 0-255\) per class, 3 for \['a', 'b', 'c'\]"):
        build_dataset("folder", root, "train", classes=["a", "b", "c"], palette=[[1, 2, 3]])


def test_a_crop_larger_than_the_images_is_warned_about(tmp_path):
    root = _shapes(str(tmp_path / "d"), n=3, size=(64, 96), split="train")
    ds = build_dataset("folder", root, "train", classes=["bg", "rect", "circle"])
    with pytest.warns(UserWarning, match=r"dataset.crop_size=\[512, 512\] is larger than the training images \(the "
                                         r"largest of 3 read is 64x96\): every crop is padded with ignored pixels to "
                                         r"512x512, 98 % of it padding .* dataset.crop_size=auto .* "
                                         r"dataset.crop_size=\[64,96\]"):
        assert fit_crop({"name": "folder", "crop_size": [512, 512]}, ds) == [512, 512]
    assert fit_crop({"name": "folder", "crop_size": "auto"}, ds) == [64, 96]


def test_a_bad_mask_among_the_first_images_stops_before_the_first_step(tmp_path, capsys):
    root = _shapes(str(tmp_path / "d"), n=4, size=(32, 32), split="train", bad=0)
    _shapes(root, n=1, size=(32, 32), split="val")
    with pytest.raises(SystemExit):
        run_train([*SMALL, "dataset=folder", f"dataset.root={root}", "dataset.classes=[bg,rect,circle]",
                   f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert "000.png: invalid label value(s) [9]" in err and "iter 1" not in err and "Traceback" not in err


def test_a_mistyped_root_of_the_embedded_dataset_generates_nothing(trained_run, tmp_path, capsys, monkeypatch):
    """eval.py and train.py as typed, with dataset.root one letter short: one paragraph naming dataset.root,
    nothing written there; the default place still generates on first use (checked without generating)."""
    from segattn.data import synthetic

    monkeypatch.chdir(tmp_path)
    typo = "data/mini_cityscape"
    for run, argv in ((run_eval, [f"checkpoint={trained_run}/checkpoints/last.pt", f"dataset.root={typo}"]),
                      (run_train, [*TINY, f"dataset.root={typo}"])):
        with pytest.raises(SystemExit) as exc:
            run(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 1 and "Traceback" not in err
        assert (f"dataset.root='{typo}' does not exist: the embedded dataset is generated on first use only at its "
                f"default place, data/mini_cityscapes") in err and f"python -m segattn.data.synthetic {typo}" in err
        assert not os.path.exists(typo)
    assert os.path.abspath("data/mini_cityscapes") in synthetic.default_roots()
