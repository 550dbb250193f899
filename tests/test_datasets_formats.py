"""Inference modes, dataset formats (ADE20K, folders, Cityscapes test split), exports, the base-scale resize.

Everything here is unit-sized: tiny models built directly, tiny generated trees; no training.
"""

import fnmatch
import os
import shutil

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from segattn.data import ADE20KDataset, CityscapesDataset, FolderDataset, build_dataset, build_train_transform
from segattn.data.ade20k import ADE20K_CLASSES
from segattn.data.cityscapes import lookup_table
from segattn.data.labels import CITYSCAPES_ID_TO_TRAINID, readable_palette
from segattn.data.transforms import RandomResizeToScale
from segattn.engine.predictions import PredictionWriter, encode
from segattn.viz import confusion_image
from segattn.models.inference import fit_to_scale, infer, inference_kwargs
from segattn.models import build_model

from conftest import REPO


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model({"name": "resnet18", "depth": 18, "width": 8}, {"name": "fcn", "channels": 16}, 5, {"channels": 8})
    return m.eval()


class PixelModel(nn.Module):
    """Logits that depend on each pixel alone (a 1x1 conv at full resolution): any window, scale-free
    bookkeeping error in slide or flip inference shows up as a difference from whole-image inference."""

    def __init__(self, k=4):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, k, 1)
        self.sizes, self.batches = [], []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        self.batches.append(x.shape[0])
        return {"out": self.conv(x)}


# --- inference ------------------------------------------------------------------------------------

def test_slide_equals_whole_when_one_window_covers_the_image(model):
    x = torch.randn(2, 3, 40, 56)
    whole = model.predict(x)
    assert torch.equal(model.predict(x, mode="slide", crop_size=[40, 56], stride=[30, 40]), whole)
    assert torch.equal(model.predict(x, mode="slide", crop_size=[64, 64], stride=[48, 48]), whole)


def test_slide_on_an_image_smaller_than_the_crop(model):
    x = torch.randn(1, 3, 23, 31)
    out = model.predict(x, mode="slide", crop_size=[769, 769], stride=[513, 513])
    assert out.shape == (1, 5, 23, 31)
    assert torch.equal(out, model.predict(x))


def test_slide_windows_cover_and_average_every_pixel():
    m = PixelModel()
    x = torch.randn(1, 3, 37, 50)
    out = infer(m, x, "slide", crop_size=[16, 20], stride=[10, 13], window_batch=1)
    assert torch.allclose(out, m.conv(x), atol=1e-6)  # averaging identical per-pixel logits changes nothing
    # Windows: rows start 0, 10, 20, then 21 (shifted back to end at the border); every window full size.
    assert m.sizes == [(16, 20)] * (4 * 4) and m.batches == [1] * 16
    m.sizes, m.batches = [], []
    # By default 4 windows go through the model together: the same 16 windows, the same logits.
    assert torch.allclose(infer(m, x, "slide", crop_size=[16, 20], stride=[10, 13]), out, atol=1e-6)
    assert m.sizes == [(16, 20)] * 4 and m.batches == [4] * 4


def test_slide_averages_overlapping_windows(model):
    x = torch.randn(1, 3, 48, 64)
    out = model.predict(x, mode="slide", crop_size=[32, 32], stride=[16, 16])
    # The top-left 16x16 block is seen by one window only: its logits are that window's.
    first = model.predict(x[:, :, :32, :32])
    assert torch.allclose(out[:, :, :16, :16], first[:, :, :16, :16], atol=1e-6)
    # The centre block is seen by four windows: the mean of the four.
    wins = [model.predict(x[:, :, y:y + 32, x0:x0 + 32]) for y in (0, 16) for x0 in (16, 32)]
    centre = sum(w[:, :, 16 - y:32 - y, 32 - x0:48 - x0] for w, (y, x0) in zip(wins, [(0, 16), (0, 32), (16, 16), (16, 32)])) / 4
    assert torch.allclose(out[:, :, 16:32, 32:48], centre, atol=1e-5)


def test_multi_scale_of_one_scale_without_flip_is_whole(model):
    x = torch.randn(1, 3, 40, 56)
    assert torch.equal(model.predict(x, scales=[1.0], flip=False), model.predict(x))


def test_flip_makes_the_prediction_mirror_equivariant(model):
    x = torch.randn(1, 3, 40, 56)
    a = model.predict(x, flip=True)
    b = model.predict(x.flip(-1), flip=True)
    assert torch.allclose(a, b.flip(-1), atol=1e-5)
    assert not torch.allclose(model.predict(x), model.predict(x.flip(-1)).flip(-1), atol=1e-3)  # the model alone is not
    assert torch.allclose(a.sum(1), torch.ones(1, 40, 56), atol=1e-5)  # averaged probabilities


def test_multi_scale_averages_probabilities_pass_by_pass():
    m = PixelModel()
    x = torch.randn(1, 3, 30, 44)
    out = infer(m, x, scales=[0.5, 1.0, 1.5], flip=True)
    assert out.shape == (1, 4, 30, 44)
    assert torch.allclose(out.sum(1), torch.ones(1, 30, 44), atol=1e-5)
    # One pass per scale and flip, at the scaled size; nothing at more than one scale at a time.
    assert m.sizes == [(15, 22), (15, 22), (30, 44), (30, 44), (45, 66), (45, 66)]
    # At scale 1 the pixel model's probabilities are exact; the mean over scales stays close to them.
    assert (out.argmax(1) == m.conv(x).argmax(1)).float().mean() > 0.8


def test_base_scale_resizes_first_and_scores_at_the_input_size():
    assert fit_to_scale(375, 500, [2048, 512]) == (512, 683)  # mmcv rescale_size: short side to 512
    assert fit_to_scale(512, 683, [2048, 512]) == (512, 683)
    assert fit_to_scale(1024, 2048, [2048, 1024]) == (1024, 2048)
    m = PixelModel()
    out = infer(m, torch.randn(1, 3, 30, 40), base_scale=[80, 60])
    assert m.sizes == [(60, 80)] and out.shape == (1, 4, 30, 40)


def test_inference_settings_are_checked(model):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="inference.mode='tiles'"):
        model.predict(x, mode="tiles")
    with pytest.raises(ValueError, match="inference.crop_size"):
        model.predict(x, mode="slide")
    with pytest.raises(ValueError, match="stride"):
        model.predict(x, mode="slide", crop_size=[8, 8], stride=[9, 8])
    with pytest.raises(ValueError, match="inference.mode='tiles'"):
        inference_kwargs({"mode": "tiles"})  # refused before any image is predicted
    with pytest.raises(ValueError, match="inference.window"):
        inference_kwargs({"mode": "whole", "window": 3})
    assert inference_kwargs({"mode": "slide", "crop_size": [4, 4], "stride": [2, 2], "flip": None}) == {
        "mode": "slide", "crop_size": [4, 4], "stride": [2, 2]}
    # A slide node without its windows is refused up front (eval.py: before the model is built).
    with pytest.raises(ValueError, match=r"inference.mode=slide needs inference.stride"):
        inference_kwargs({"mode": "slide", "crop_size": [4, 4], "flip": None})
    with pytest.raises(ValueError, match=r"needs inference.crop_size and inference.stride"):
        inference_kwargs({"mode": "slide"})


# --- ADE20K ----------------------------------------------------------------------------------------

def _write_ade(root, split="training", values=((0, 1), (150, 255))):
    base = os.path.join(root, "ADEChallengeData2016")
    for i, v in enumerate(values):
        for sub in ("images", "annotations"):
            os.makedirs(os.path.join(base, sub, split), exist_ok=True)
        name = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
        cv2.imwrite(os.path.join(base, "images", split, name + ".jpg"), np.full((8, 12, 3), 40 * i, np.uint8))
        ann = np.zeros((8, 12), np.uint8)
        ann[:, :6], ann[:, 6:] = v
        Image.fromarray(ann).save(os.path.join(base, "annotations", split, name + ".png"))
    return base


def test_ade20k_reduces_the_zero_label(tmp_path):
    base = _write_ade(str(tmp_path))
    ds = ADE20KDataset(str(tmp_path), "training")
    assert len(ds) == 2 and ds.num_classes == 150 and ds.has_masks
    assert ds.classes[0] == "wall" and ds.classes[12] == "person" and ds.classes[149] == "flag"
    assert len(set(ADE20K_CLASSES)) == 150
    m0, m1 = ds[0]["mask"], ds[1]["mask"]
    assert set(m0[:, :6].unique().tolist()) == {255} and set(m0[:, 6:].unique().tolist()) == {0}  # 0 ignored, 1 -> 0
    assert set(m1[:, :6].unique().tolist()) == {149} and set(m1[:, 6:].unique().tolist()) == {255}
    # The ADEChallengeData2016 folder itself and the short split names work too.
    assert len(ADE20KDataset(base, "train")) == 2
    # Exports go back to the annotation encoding (class k -> k + 1).
    pred = np.array([[0, 12, 149]])
    assert ds.label_ids(pred).tolist() == [[1, 13, 150]]
    assert ds.luts[0][ds.label_ids(pred)].tolist() == pred.tolist()


def test_ade20k_bad_values_and_missing_root_are_named(tmp_path):
    _write_ade(str(tmp_path), values=((151, 1),))
    with pytest.raises(ValueError, match=r"ADE_train_00000001.png: invalid label value\(s\) \[151\]"):
        ADE20KDataset(str(tmp_path), "training")[0]
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2016/images/<split>"):
        ADE20KDataset(str(tmp_path / "nowhere"), "training")
    with pytest.raises(FileNotFoundError, match=r"has no images"):
        ADE20KDataset(str(tmp_path), "validation")


# --- folders --------------------------------------------------------------------------------------

def _write_folder(root, with_masks=True):
    for i, sub in enumerate(["a/x", "a/y", "b/z"]):
        img = os.path.join(root, "images", "train", sub + ".jpg")
        os.makedirs(os.path.dirname(img), exist_ok=True)
        cv2.imwrite(img, np.full((10, 14, 3), 30 * i, np.uint8))
        if with_masks:
            mask = os.path.join(root, "masks", "train", sub + ".png")
            os.makedirs(os.path.dirname(mask), exist_ok=True)
            m = np.full((10, 14), i, np.uint8)
            m[0] = 255
            Image.fromarray(m).save(mask)


def test_folder_dataset_pairs_images_and_masks(tmp_path):
    _write_folder(str(tmp_path))
    ds = build_dataset("folder", str(tmp_path), "train", classes=["sky", "road", "car"], crop_size=[8, 8])
    assert isinstance(ds, FolderDataset) and len(ds) == 3 and ds.classes == ("sky", "road", "car")
    item = ds[2]
    assert item["image"].shape == (3, 10, 14) and item["path"].endswith("b/z.jpg")
    assert set(item["mask"][1:].unique().tolist()) == {2} and set(item["mask"][0].unique().tolist()) == {255}
    assert ds.prediction_name(item["path"]) == os.path.join("b", "z")
    with pytest.raises(ValueError, match=r"invalid label value\(s\) \[2\]"):  # value 2 with two classes
        build_dataset("folder", str(tmp_path), "train", classes=["a", "b"], mask_dir="masks")[2]
    with pytest.raises(ValueError, match="dataset.classes"):
        FolderDataset(str(tmp_path / "images" / "train"), str(tmp_path / "masks" / "train"))
    os.remove(tmp_path / "masks" / "train" / "a" / "y.png")
    with pytest.raises(FileNotFoundError, match=r"a/y.jpg: no mask .*masks/train/a/y.png"):
        FolderDataset(str(tmp_path / "images" / "train"), str(tmp_path / "masks" / "train"), ["a", "b", "c"])


def test_folder_of_images_only_and_empty_folders(tmp_path):
    _write_folder(str(tmp_path), with_masks=False)
    ds = build_dataset("folder", str(tmp_path), "train", classes=["a", "b"], mask_dir=None)
    assert not ds.has_masks and (ds[0]["mask"] == 255).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no image files.*\n.*<images>/<name>"):
        FolderDataset(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("folder", str(tmp_path / "nowhere"), "val", classes=["a"])


# --- Cityscapes test split and exports ------------------------------------------------------------

def test_cityscapes_test_split_is_images_only(tiny_root, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(os.path.join(tiny_root, "leftImg8bit", "val"), root / "leftImg8bit" / "test")
    ds = CityscapesDataset(str(root), "test")
    assert len(ds) == 2 and not ds.has_masks and (ds[0]["mask"] == 255).all()
    assert CityscapesDataset(tiny_root, "val").has_masks


def test_labelids_round_trip_is_the_identity_on_train_ids(tiny_root):
    ds = CityscapesDataset(tiny_root, "val")
    train_ids = np.arange(19)
    label_ids = ds.label_ids(train_ids)
    assert label_ids[[0, 13, 18]].tolist() == [7, 26, 33]  # road, car, bicycle: the official ids
    back = lookup_table(CITYSCAPES_ID_TO_TRAINID, 19)[label_ids]
    assert back.tolist() == train_ids.tolist()


def test_export_names_follow_the_official_pattern(tiny_root, tmp_path):
    ds = CityscapesDataset(tiny_root, "val")
    item = ds[0]
    pred = torch.randint(0, 19, item["mask"].shape)
    written = {}
    for fmt in ("labelids", "trainids", "color"):
        writer = PredictionWriter(str(tmp_path / fmt), fmt, ds)
        written[fmt] = writer(pred, item["path"])
    assert os.path.basename(written["labelids"]) == "frankfurt_000000_000019_labelIds.png"
    assert os.path.basename(written["trainids"]) == "frankfurt_000000_000019_labelTrainIds.png"
    # cityscapesscripts looks a prediction up by "<city>_<seq>_<frame>*.png"
    assert fnmatch.fnmatch(os.path.basename(written["labelids"]), "frankfurt_000000_000019*.png")
    ids, tids = np.array(Image.open(written["labelids"])), np.array(Image.open(written["trainids"]))
    assert tids.tolist() == pred.tolist()
    assert lookup_table(CITYSCAPES_ID_TO_TRAINID, 19)[ids].tolist() == pred.tolist()
    assert np.array(Image.open(written["color"])).shape == (*pred.shape, 3)
    assert encode(np.array([[0]]), "color", ds).tolist() == [[[128, 64, 128]]]  # road's palette colour
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="export_format='jpeg'"):
        PredictionWriter(str(tmp_path), "jpeg", ds)


def test_confusion_image_shows_rows_normalised():
    from segattn import viz

    cm = torch.tensor([[10, 0, 0], [0, 5, 5], [0, 0, 0]])
    img = confusion_image(cm, size=60)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    # 3x3 cells of 20 pixels at the bottom, left of the colour bar; class colour strips above and left.
    right = img.shape[1] - viz.COLORBAR_WIDTH
    heat = img[-60:, right - 60:right]
    yellow, dark = heat[2, 2], heat[2, 22]  # row 0: all on the diagonal (corners: clear of the digits)
    assert yellow.tolist() == [253, 231, 37] and dark.tolist() == [68, 1, 84]
    assert heat[22, 22].tolist() == heat[22, 42].tolist()  # row 1: split evenly
    assert heat[42, 42].tolist() == list(viz.NAN_GREY)  # class 2 has no ground-truth pixels
    strip = img[-60 - 8:-60, right - 60:right]
    # class 0's colour on top: 3 classes of no known dataset get the readable palette's first colour
    assert strip[4, 5].tolist() == readable_palette(3)[0].tolist() == [31, 119, 180]
    # The title says which axis is which; the colour bar beside the cells runs from 0 % (dark) to
    # 100 % (yellow).
    assert img[:12].astype(int).sum(-1).min() < 200  # text in the title strip
    bar = img[-60:, right + viz.BAR_GAP + viz.BAR_WIDTH // 2]
    assert bar[0].tolist() == [253, 231, 37] and bar[-1].tolist() == [68, 1, 84]

    # With class names and cells large enough, the names sit beside the rows and above the columns,
    # and each cell holds its percentage of the row.
    names = ["road", "a-very-long-class-name", "sky"]
    big = confusion_image(cm, size=90, class_names=names)
    right = big.shape[1] - viz.COLORBAR_WIDTH
    plain = confusion_image(cm, size=90, class_names=["r", "s", "t"])
    assert big.shape[0] > plain.shape[0] and big.shape[1] > plain.shape[1]  # room for the longer names
    cells = big[-90:, right - 90:right].astype(int)
    assert (cells[10:20, 0:30].sum(-1) < 150).any()  # cell (0, 0) at 100 %: dark digits on yellow
    assert (cells[10:20, 30:60].sum(-1) > 600).any()  # cell (0, 1) at 0 %: white digits on dark
    assert (cells[40:50, 30:60].sum(-1) > 600).any()  # cell (1, 1) at 50 %
    assert (cells[70:80].astype(int) == viz.NAN_GREY).all()  # no pixels of class 2: no numbers
    left = big[-90:, :right - 90 - 8].astype(int).sum(-1)
    assert (left[:30] < 300).sum() > 10 and (left[60:] < 300).sum() > 10  # names by rows 0 and 2
    assert (big[:-98, right - 90:right].astype(int).sum(-1) < 300).sum() > 50  # names above the columns
    with pytest.raises(ValueError, match="2 class names for a 3x3"):
        confusion_image(cm, class_names=["a", "b"])


# --- the base-scale random resize -----------------------------------------------------------------

def test_random_resize_to_scale_follows_mmseg():
    size = RandomResizeToScale.target_size
    assert size(300, 400, (2048, 512), 1.0) == (512, 683)  # short side to 512
    assert size(300, 400, (2048, 512), 0.5) == (256, 341)
    assert size(300, 2000, (2048, 512), 1.0) == (307, 2048)  # the long side limits a panorama
    assert size(1024, 2048, (2048, 1024), 0.75) == (768, 1536)  # Cityscapes: a plain ratio of the image
    t = A.Compose([RandomResizeToScale(scale=(64, 32), ratio_range=(0.5, 2.0))], strict=True, seed=0)
    mask = np.kron(np.arange(6).reshape(2, 3), np.ones((10, 10))).astype(np.uint8)
    for _ in range(5):
        out = t(image=np.zeros((20, 30, 3), np.uint8), mask=mask)
        h, w = out["mask"].shape
        assert out["image"].shape[:2] == (h, w) and 16 <= h <= 64 and abs(w / h - 1.5) < 0.1
        assert set(np.unique(out["mask"])) <= set(range(6))  # nearest: no new label values
    with pytest.raises(ValueError, match="not valid"):
        A.Compose([RandomResizeToScale(scale=(64, 32), ratio=(0.5, 2.0))], strict=True)
    with pytest.raises(ValueError, match="dataset.base_scale"):
        build_train_transform([32, 32], base_scale=[2048])
    tf = build_train_transform([32, 32], base_scale=[2048, 512])
    assert isinstance(tf.transforms[0], RandomResizeToScale) and tf.transforms[0].scale == (2048, 512)


# --- configs --------------------------------------------------------------------------------------

def _compose(name, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_each_dataset_config_carries_its_benchmark_inference():
    mini = _compose("train", [])
    assert mini.dataset.inference.mode == "whole"
    cs = _compose("train", ["dataset=cityscapes"]).dataset.inference
    assert cs.mode == "slide" and list(cs.crop_size) == [769, 769] and list(cs.stride) == [513, 513]
    ade = _compose("train", ["dataset=ade20k"]).dataset
    assert ade.inference.mode == "slide" and list(ade.inference.crop_size) == [512, 512]
    assert list(ade.inference.stride) == [341, 341] and list(ade.inference.base_scale) == [2048, 512]
    assert ade.train_split == "training" and ade.val_split == "validation" and list(ade.base_scale) == [2048, 512]
    assert list(_compose("train", ["dataset=folder"]).dataset.classes)
    for name in ("mini", "cityscapes", "ade20k", "folder"):
        inference_kwargs(_compose("train", [f"dataset={name}"]).dataset.inference)  # only known keys


def test_ade20k_recipe_values():
    cfg = _compose("train", ["+experiment=ade20k_r50_d8_160k"])
    assert cfg.dataset.name == "ade20k" and list(cfg.dataset.crop_size) == [512, 512]
    assert list(cfg.dataset.base_scale) == [2048, 512] and list(cfg.dataset.scale_range) == [0.5, 2.0]
    assert cfg.dataset.cat_max_ratio == 0.75
    assert cfg.backbone.depth == 50 and cfg.backbone.deep_stem and cfg.backbone.norm == "syncbn"
    assert cfg.backbone.output_stride == 8 and cfg.head.channels == 512 and cfg.model.aux_head.weight == 0.4
    assert cfg.trainer.max_iters == 160000 and cfg.trainer.batch_size == 4
    assert cfg.optimizer.lr == 0.01 and cfg.scheduler.name == "poly" and cfg.scheduler.min_lr == 1e-4


def test_eval_config_has_the_design_keys():
    cfg = _compose("eval", ["checkpoint=x.pt"])
    assert set(cfg.inference) >= {"mode", "crop_size", "stride", "scales", "flip"}
    assert {"checkpoint", "export_dir", "export_format"} <= set(cfg)
    assert cfg.dataset.root is None and cfg.dataset.split is None
