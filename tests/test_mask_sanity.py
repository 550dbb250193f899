"""Mask sanity: binary masks saved as 0/255 images are warned about (255 is "ignore"), and dataset.check
prints the labelled pixels per class and names the classes never seen."""

import os
import warnings

import cv2
import numpy as np
import pytest

from segattn.data import FolderDataset, build_dataset
from segattn.data.check import class_pixels

from conftest import TINY, run_train


def _binary_folder(root, values=(0, 255), n=(3, 2)):
    """Images with a bright square; its mask holds values[1] there and values[0] elsewhere."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), n):
        for i in range(count):
            image = rng.integers(0, 60, (32, 48, 3), dtype=np.uint8)
            mask = np.full((32, 48), values[0], np.uint8)
            image[8:24, 10 + i:30 + i] = 220
            mask[8:24, 10 + i:30 + i] = values[1]
            for sub, data, ext in (("images", image, ".jpg"), ("masks", mask, ".png")):
                os.makedirs(os.path.join(root, sub, split), exist_ok=True)
                cv2.imwrite(os.path.join(root, sub, split, f"{i}{ext}"), data)
    return root


def test_masks_of_only_0_and_255_are_warned_about_with_the_fix(tmp_path):
    root = _binary_folder(str(tmp_path / "bw"))
    with pytest.warns(UserWarning) as record:
        ds = build_dataset("folder", root, "train", classes=["background", "lesion"])
    message = str(record[0].message)
    assert os.path.join(root, "masks", "train") in message and "hold only the values 0 and 255" in message
    assert "learns class 0 ('background') alone and never 'lesion'" in message
    assert "store 1 for the foreground" in message and "dataset.ignore_index=255" in message
    # what the warning is about: every foreground pixel is ignored, so class 1 is never a target
    assert set(np.unique(ds.load(0)[1]).tolist()) == {0, 255}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_dataset("folder", root, "train", classes=["background", "lesion"], ignore_index=255)  # said on purpose
        fixed = _binary_folder(str(tmp_path / "01"), values=(0, 1))  # the fix: 1 for the foreground
        ds = build_dataset("folder", fixed, "train", classes=["background", "lesion"])
        assert set(np.unique(ds.load(0)[1]).tolist()) == {0, 1}
    with pytest.raises(ValueError, match=r"dataset.ignore_index=1: expected a mask value in 2..255"):
        FolderDataset(os.path.join(root, "images", "train"), os.path.join(root, "masks", "train"),
                      ["background", "lesion"], ignore_index=1)


def test_an_ignore_index_ignores_that_value(tmp_path):
    root = _binary_folder(str(tmp_path / "x"), values=(1, 100))
    ds = build_dataset("folder", root, "train", classes=["a", "b"], ignore_index=100)
    assert set(np.unique(ds.load(0)[1]).tolist()) == {1, 255}
    with pytest.raises(ValueError, match=r"invalid label value\(s\) \[100\]"):  # without it, 100 is refused
        build_dataset("folder", root, "train", classes=["a", "b"]).load(0)


def test_class_pixels_counts_and_names_the_classes_never_seen(tmp_path):
    root = _binary_folder(str(tmp_path / "y"), values=(0, 1))
    classes = ["background", "lesion", "scar"]
    splits = {s: build_dataset("folder", root, s, classes=classes) for s in ("train", "val")}
    report = class_pixels(splits)
    lesion = sum(int((splits["train"].load(i)[1] == 1).sum()) for i in range(3))
    assert lesion == 3 * 16 * 20
    line = next(row for row in report.splitlines() if row.startswith("lesion"))
    assert f"{lesion:,}" in line and f"({100 * lesion / (3 * 32 * 48):5.1f} %)" in line
    assert "never seen in train: scar (1 of 3 classes)" in report
    assert "never seen in val: scar (1 of 3 classes)" in report


def test_train_py_warns_and_dataset_check_reports_the_classes(tmp_path, capsys):
    root = _binary_folder(str(tmp_path / "bw"))
    with pytest.warns(UserWarning, match="hold only the values 0 and 255"):
        run_train([*TINY, "dataset=folder", f"dataset.root={root}", "dataset.crop_size=[32,32]",
                   "dataset.classes=[background,lesion]", "dataset.check=true", "trainer.max_iters=1",
                   f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert "dataset.check: labelled pixels per class" in err
    assert "never seen in train: lesion (1 of 2 classes)" in err and "never seen in val: lesion" in err
    assert "dataset.check: labelled pixels per class" in open(tmp_path / "run" / "train.log").read()
