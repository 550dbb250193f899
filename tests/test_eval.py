"""eval.py end to end (in-process, on the session's trained checkpoint), exact resume, init_from, TensorBoard."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from segattn.data.cityscapes import lookup_table
from segattn.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAINID
from segattn.engine.checkpoint import load_checkpoint
from segattn.engine.resume import load_init_weights
from segattn.models import build_model

from conftest import TINY, run_eval, run_train


def _eval(run_dir, tmp_path, *argv):
    out = str(tmp_path / "eval")
    run_eval([f"checkpoint={os.path.join(run_dir, 'checkpoints', 'last.pt')}", "num_workers=0", "progress=false",
              f"hydra.run.dir={out}", *argv])
    return json.load(open(os.path.join(out, "eval.json")))


def test_eval_reproduces_the_last_validation(trained_run, tiny_root, tmp_path):
    result = _eval(trained_run, tmp_path, f"dataset.root={tiny_root}")
    val = json.load(open(os.path.join(trained_run, "metrics.json")))
    assert set(result["IoU"]) == set(CITYSCAPES_CLASSES) and set(result["Acc"]) == set(CITYSCAPES_CLASSES)
    for key in ("mIoU", "mAcc", "aAcc"):
        assert 0.0 <= result[key] <= 1.0
        assert result[key] == pytest.approx(val[key], abs=1e-9), key  # exactly as validation did
    assert result["IoU"] == pytest.approx(val["IoU"], abs=1e-9, nan_ok=True)
    assert result["iter"] == 4 and result["split"] == "val" and result["images"] == 2
    assert result["inference"]["mode"] == "whole"  # the mini dataset's validation mode, from the checkpoint


def test_eval_modes_come_from_overrides(trained_run, tmp_path):
    slide = _eval(trained_run, tmp_path / "s", "inference.mode=slide", "inference.crop_size=[64,64]",
                  "inference.stride=[48,48]")
    assert slide["inference"] == {"mode": "slide", "crop_size": [64, 64], "stride": [48, 48], "scales": [1.0],
                                  "flip": False, "base_scale": None, "window_batch": 4, "batch_size": 4}
    ms = _eval(trained_run, tmp_path / "m", "inference.scales=[0.5,1.0]", "inference.flip=true")
    assert ms["inference"]["scales"] == [0.5, 1.0] and ms["inference"]["flip"] is True
    for r in (slide, ms):
        assert 0.0 <= r["mIoU"] <= 1.0 and 0.0 < r["aAcc"] <= 1.0


def test_a_checkpoint_of_other_classes_is_refused(trained_run, tmp_path, monkeypatch):
    base = tmp_path / "ade" / "ADEChallengeData2016"
    for sub in ("images", "annotations"):
        (base / sub / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(base / "images" / "validation" / "ADE_val_00000001.jpg")
    Image.fromarray(np.ones((8, 8), np.uint8)).save(base / "annotations" / "validation" / "ADE_val_00000001.png")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the exception itself, not Hydra's report and exit
    with pytest.raises(ValueError, match=r"predicts 19 classes \(trained on mini: road, .*has 150"):
        _eval(trained_run, tmp_path, "dataset.name=ade20k", f"dataset.root={tmp_path / 'ade'}", "dataset.split=validation")


def test_the_checkpoint_is_required(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the error itself, with its traceback
    with pytest.raises(ValueError, match=r"checkpoint=PATH is required"):
        run_eval([f"hydra.run.dir={tmp_path}"])


def test_export_labelids_round_trips_to_train_ids(trained_run, tmp_path):
    ids = _eval(trained_run, tmp_path / "a", f"export_dir={tmp_path / 'ids'}", "export_format=labelids")
    _eval(trained_run, tmp_path / "b", f"export_dir={tmp_path / 'tids'}", "export_format=trainids")
    names = sorted(os.listdir(tmp_path / "ids"))
    assert names == ["frankfurt_000000_000019_labelIds.png", "frankfurt_000001_000019_labelIds.png"]
    assert ids["export"]["files"] == 2 and ids["export"]["format"] == "labelids" and "mIoU" in ids
    to_train = lookup_table(CITYSCAPES_ID_TO_TRAINID, 19)
    for name in names:
        label_ids = np.array(Image.open(tmp_path / "ids" / name))
        train_ids = np.array(Image.open(tmp_path / "tids" / name.replace("labelIds", "labelTrainIds")))
        assert label_ids.shape == (64, 128) and set(np.unique(label_ids)) <= set(CITYSCAPES_ID_TO_TRAINID)
        assert np.array_equal(to_train[label_ids], train_ids)


def test_cityscapes_test_split_exports_without_metrics(trained_run, tiny_root, tmp_path, monkeypatch):
    root = tmp_path / "cs"
    shutil.copytree(os.path.join(tiny_root, "leftImg8bit", "val"), root / "leftImg8bit" / "test")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="no masks.*export_dir"):
        _eval(trained_run, tmp_path / "x", f"dataset.root={root}", "dataset.split=test")
    result = _eval(trained_run, tmp_path / "y", f"dataset.root={root}", "dataset.split=test",
                   f"export_dir={tmp_path / 'server'}")
    assert "mIoU" not in result and result["split"] == "test" and result["export"]["files"] == 2
    assert sorted(os.listdir(tmp_path / "server"))[0] == "frankfurt_000000_000019_labelIds.png"


def test_a_folder_of_pictures_is_predicted(trained_run, tiny_root, tmp_path):
    pics = tmp_path / "pics" / "street"
    pics.mkdir(parents=True)
    for f in sorted(glob.glob(os.path.join(tiny_root, "leftImg8bit", "val", "*", "*.png"))):
        shutil.copy(f, pics / os.path.basename(f).replace("_leftImg8bit", ""))
    result = _eval(trained_run, tmp_path, f"images={tmp_path / 'pics'}", f"export_dir={tmp_path / 'out'}",
                   "export_format=color")
    assert result["images"] == 2 and "mIoU" not in result
    out = sorted(glob.glob(str(tmp_path / "out" / "street" / "*_color.png")))
    assert [os.path.basename(p) for p in out] == ["frankfurt_000000_000019_color.png", "frankfurt_000001_000019_color.png"]
    assert np.array(Image.open(out[0])).shape == (64, 128, 3)


def test_resume_from_iter_checkpoint_is_exact_with_workers(tiny_root, tmp_path):
    """8 iterations straight == a run resumed from iter_4.pt of that run (workers > 0, val at 4 and 8)."""
    common = [*TINY, f"dataset.root={tiny_root}", "trainer.num_workers=2", "trainer.max_iters=8",
              "trainer.val_interval=4", "trainer.ckpt_interval=4", "trainer.log_interval=4"]
    straight = str(tmp_path / "straight")
    run_train([*common, "resume=auto", f"hydra.run.dir={straight}"])  # auto without last.pt: a fresh start
    ckpts = os.path.join(straight, "checkpoints")
    assert {"iter_4.pt", "iter_8.pt", "last.pt", "best.pt"} <= set(os.listdir(ckpts))
    assert load_checkpoint(os.path.join(ckpts, "iter_4.pt"))["iter"] == 4
    resumed = str(tmp_path / "resumed")
    run_train([*common, f"resume={os.path.join(ckpts, 'iter_4.pt')}", f"hydra.run.dir={resumed}"])
    a = load_checkpoint(os.path.join(ckpts, "last.pt"))
    b = load_checkpoint(os.path.join(resumed, "checkpoints", "last.pt"))
    assert a["iter"] == b["iter"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 8


def test_resume_from_a_missing_file_is_named(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(FileNotFoundError, match="resume='/nowhere/last.pt': no such checkpoint"):
        run_train([*TINY, f"dataset.root={tiny_root}", "resume=/nowhere/last.pt", f"hydra.run.dir={tmp_path}"])


def _folder_dataset(tiny_root, root):
    """The tiny scenes as a 3-class folder dataset (train id mod 3), to fine-tune a 19-class checkpoint on."""
    for split in ("train", "val"):
        for img in glob.glob(os.path.join(tiny_root, "leftImg8bit", split, "*", "*.png")):
            name = os.path.basename(img).replace("_leftImg8bit", "")
            gt = img.replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            m = np.array(Image.open(gt))
            m = np.where(m == 255, 255, m % 3).astype(np.uint8)
            os.makedirs(os.path.join(root, "images", split), exist_ok=True)
            os.makedirs(os.path.join(root, "masks", split), exist_ok=True)
            shutil.copy(img, os.path.join(root, "images", split, name))
            Image.fromarray(m).save(os.path.join(root, "masks", split, name))


def test_init_from_fine_tunes_and_skips_the_classifiers(trained_run, tiny_root, tmp_path):
    source = os.path.join(trained_run, "checkpoints", "last.pt")
    data = str(tmp_path / "three")
    _folder_dataset(tiny_root, data)
    run_dir = str(tmp_path / "ft")
    with pytest.warns(UserWarning, match=r"model.init_from=.*4 weights .*head.cls.weight, head.cls.bias, "
                                         r"aux_head.cls.weight, aux_head.cls.bias"):
        run_train([*TINY, "dataset=folder", f"dataset.root={data}", "dataset.classes=[a,b,c]",
                   "dataset.crop_size=[64,64]", f"model.init_from={source}", "optimizer.lr=0.0",
                   "trainer.max_iters=1", "trainer.val_interval=1", f"hydra.run.dir={run_dir}"])
    old = load_checkpoint(source)["model"]
    new = load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))
    assert new["iter"] == 1 and new["config"]["num_classes"] == 3  # a new run: its own count and classes
    assert new["model"]["head.cls.weight"].shape[0] == 3
    for k in ("backbone.conv1.weight", "backbone.layer4.1.conv2.weight", "head.convs.0.0.weight"):
        assert torch.equal(new["model"][k], old[k]), k  # lr 0: still the checkpoint's weights
    json.load(open(os.path.join(run_dir, "metrics.json")))


def test_init_from_another_architecture_is_an_error(trained_run):
    model = build_model({"name": "resnet18", "depth": 18, "width": 16}, {"name": "se", "channels": 32}, 19,
                        {"channels": 16})
    with pytest.raises(ValueError, match="does not fit this model.*backbone.pretrained="):
        load_init_weights(model, os.path.join(trained_run, "checkpoints", "last.pt"))


def test_tensorboard_has_confusion_matrix_and_hparams(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(trained_run, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    assert "val/confusion_matrix" in acc.Tags()["images"]
    img = acc.Images("val/confusion_matrix")[-1]
    # 19 classes of 512 // 19 pixels, under the title and the column names, right of the row names,
    # left of the colour bar
    from segattn.viz import COLORBAR_WIDTH

    assert img.width > 19 * 26 + COLORBAR_WIDTH + 40 and img.height > 19 * 26 + 40
    content = acc.PluginTagToContent("hparams")
    start = [plugin_data_pb2.HParamsPluginData.FromString(v) for k, v in content.items() if "session_start" in k]
    hp = start[0].session_start_info.hparams
    assert hp["head"].string_value == "fcn" and hp["backbone"].string_value == "resnet18"
    assert hp["lr"].number_value == 0.01 and hp["crop"].string_value == "64x64"
    final = json.load(open(os.path.join(trained_run, "metrics.json")))["mIoU"]
    assert acc.Scalars("hparams/mIoU")[-1].value == pytest.approx(final, abs=1e-6)


def test_eval_writes_per_image_scores_and_its_speed(trained_run, tiny_root, tmp_path, capsys):
    """per_image.csv: one row per image, worst mIoU first; each row's numbers are that image's own confusion
    matrix (checked against the exported prediction); the speed in the console and eval.json."""
    preds = tmp_path / "preds"
    result = _eval(trained_run, tmp_path, f"dataset.root={tiny_root}", f"export_dir={preds}", "export_format=trainids")
    out = capsys.readouterr().out
    import csv

    from segattn.data import build_dataset
    from segattn.metrics import ConfusionMatrix

    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_image.csv")))
    assert result["per_image"] == str(tmp_path / "eval" / "per_image.csv")
    assert len(rows) == 2 and list(rows[0])[:4] == ["image", "mIoU", "pixel_accuracy", "labelled_pixels"]
    assert [k for k in rows[0]][4:] == [f"IoU/{c}" for c in CITYSCAPES_CLASSES]
    assert float(rows[0]["mIoU"]) <= float(rows[1]["mIoU"])
    val = build_dataset("mini", tiny_root, "val")
    total = ConfusionMatrix(19)
    for row in rows:
        i = val.images.index(row["image"])
        mask = val.load(i)[1]
        stem = os.path.basename(row["image"]).replace("_leftImg8bit.png", "")
        pred = np.array(Image.open(preds / f"{stem}_labelTrainIds.png"))
        cm = ConfusionMatrix(19)
        cm.update(torch.from_numpy(pred), torch.from_numpy(mask))
        total.update(torch.from_numpy(pred), torch.from_numpy(mask))
        m = cm.compute()
        assert float(row["mIoU"]) == pytest.approx(m["mIoU"], abs=1e-6)
        assert float(row["pixel_accuracy"]) == pytest.approx(m["aAcc"], abs=1e-6)
        assert int(row["labelled_pixels"]) == int((mask != 255).sum())
        for c, iou in zip(CITYSCAPES_CLASSES, m["IoU"]):
            assert (row[f"IoU/{c}"] == "") if iou != iou else float(row[f"IoU/{c}"]) == pytest.approx(iou, abs=1e-6)
    assert total.compute()["mIoU"] == pytest.approx(result["mIoU"], abs=1e-9)  # the rows add up to the dataset
    s = result["speed"]
    assert s["images"] == 2 and s["inference"] == "whole" and s["batch_size"] == 4 and s["device"] == "cpu"
    assert s["images_per_s"] == pytest.approx(2 / s["seconds"]) and 0 < s["model_ms_per_image"] <= s["ms_per_image"]
    assert f"speed: {s['images_per_s']:.2f} images/s, {s['ms_per_image']:.1f} ms per image (whole, batch 4, cpu;" in out
    assert "lowest per-image mIoU: " in out and os.path.basename(rows[0]["image"]) in out


def test_the_speed_names_the_slide_window():
    from segattn.engine.evaluate import describe_inference

    assert describe_inference({"mode": "slide", "crop_size": [769, 769], "stride": [513, 513], "scales": [1.0],
                               "flip": False}) == "slide 769x769 windows, stride 513x513"
    assert describe_inference({"mode": "whole", "scales": [0.5, 1.0], "flip": True}) == "whole, scales [0.5, 1.0] + flip"
