"""Faults injected on purpose: bad input gets a clear error, a fault loses nothing, a run can be reproduced.

Each test breaks one thing (a file, a config key, a checkpoint, the disk, the loss, the process) and
checks what the user is told and what is left on disk. Through train.py in-process, except where a
process being killed is the point.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segattn.data import CityscapesDataset, DatasetError, FolderDataset, build_train_transform, check_dataset
from segattn.data import check as check_module
from segattn.engine import preflight
from segattn.engine.checkpoint import clean_stale_tmp, load_checkpoint, model_from_checkpoint, save_checkpoint
from segattn.models import Segmentor
from segattn.models.backbone import ResNet

from conftest import REPO, TINY, run_eval, run_train


def _copy(tiny_root, tmp_path) -> str:
    root = str(tmp_path / "cs")
    shutil.copytree(tiny_root, root)
    return root


def _files(root, kind, split):
    pattern = "*_leftImg8bit.png" if kind == "image" else f"*_gtFine_{kind}.png"
    folder = "leftImg8bit" if kind == "image" else "gtFine"
    return sorted(glob.glob(os.path.join(root, folder, split, "*", pattern)))


def _edit_mask(path, edit):
    m = np.array(Image.open(path))
    Image.fromarray(edit(m)).save(path)


def _fails(argv, capsys, monkeypatch) -> str:
    """Run train.py as a user does (Hydra reports the error and exits 1); returns what was printed."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_train(argv)
    code = exit_info.value.code
    if isinstance(code, str):  # SystemExit("message"): Python prints it to stderr and exits with status 1
        return code
    assert code == 1
    return capsys.readouterr().err


# --- bad input: dataset files ---------------------------------------------------------------------

def test_label_values_are_checked_against_each_files_format(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    train_ids, label_ids = _files(root, "labelTrainIds", "val"), _files(root, "labelIds", "val")
    _edit_mask(train_ids[0], lambda m: np.where(np.arange(m.shape[1]) < 2, np.uint8(19), m).astype(np.uint8))
    _edit_mask(train_ids[1], lambda m: np.full_like(m, 254))
    ds = CityscapesDataset(root, "val")
    with pytest.raises(DatasetError, match=r"_000000_000019_gtFine_labelTrainIds.png: invalid label value\(s\) "
                                           r"\[19\] for this file's format \(valid: 0-18, 255\)"):
        ds.load(0)
    with pytest.raises(DatasetError, match=r"labelTrainIds.png: invalid label value\(s\) \[254\]"):
        ds.load(1)
    # A labelIds file saved under the labelTrainIds name: its ids above 18 (sky 23, car 26) give it away.
    shutil.copy(label_ids[0], train_ids[0])
    with pytest.raises(DatasetError, match=r"labelTrainIds.png: invalid label value\(s\) \[.*23"):
        CityscapesDataset(root, "val").load(0)
    # labelIds go up to 33 (255: the license plate); 34 and 77 are not ids.
    for f in train_ids:
        os.remove(f)
    _edit_mask(label_ids[0], lambda m: np.where(np.arange(m.shape[1]) < 1, np.uint8(34), m).astype(np.uint8))
    _edit_mask(label_ids[1], lambda m: np.where(np.arange(m.shape[1]) < 1, np.uint8(77), m).astype(np.uint8))
    ds = CityscapesDataset(root, "val")
    with pytest.raises(DatasetError, match=r"labelIds.png: invalid label value\(s\) \[34\] .*\(valid: 0-33, 255\)"):
        ds.load(0)
    with pytest.raises(DatasetError, match=r"labelIds.png: invalid label value\(s\) \[77\]"):
        ds.load(1)


def test_mismatched_unreadable_and_truncated_files_are_named(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    masks, images = _files(root, "labelTrainIds", "val"), _files(root, "image", "val")
    _edit_mask(masks[0], lambda m: m[:, :100])
    with pytest.raises(DatasetError, match=r"labelTrainIds.png: mask is 100x64 but its image .*_leftImg8bit.png "
                                           r"is 128x64 \(W x H\)"):
        CityscapesDataset(root, "val").load(0)
    data = open(images[1], "rb").read()
    open(images[1], "wb").write(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"000001_000019_leftImg8bit.png: cannot read the image \(empty, truncated"):
        CityscapesDataset(root, "val").load(1)

    # OpenCV decodes a JPEG cut short without an error (grey rows); it is caught all the same.
    folder = tmp_path / "jpg"
    folder.mkdir()
    picture = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", picture)
    jpeg = jpeg.tobytes()
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    (folder / "trailer.jpg").write_bytes(jpeg + b"\0" * 4096)  # data after the end marker (some cameras): fine
    assert cv2.imread(str(folder / "cut.jpg")) is not None  # what we guard against
    ds = FolderDataset(str(folder))
    with pytest.raises(DatasetError, match=r"cut.jpg: the JPEG file is truncated"):
        ds.load(0)
    assert ds.load(1)[0].shape == (48, 64, 3)


def test_missing_masks_are_all_listed_and_empty_or_missing_roots_show_the_layout(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    for f in _files(root, "labelTrainIds", "train")[:2] + _files(root, "labelIds", "train")[:2]:
        os.remove(f)
    with pytest.raises(FileNotFoundError) as e:
        CityscapesDataset(root, "train")
    message = str(e.value)
    assert message.startswith("2 images have no mask:")
    for stem in ("aachen_000000_000019", "aachen_000001_000019"):
        assert f"{stem}_leftImg8bit.png: no mask" in message and f"{stem}_gtFine_labelIds.png" in message
    assert "<root>/gtFine/<split>/<city>/" in message  # the expected layout follows
    os.makedirs(os.path.join(root, "leftImg8bit", "empty"))
    with pytest.raises(FileNotFoundError, match=r"has no images for split 'empty'; expected the Cityscapes layout:\n"):
        CityscapesDataset(root, "empty")
    with pytest.raises(FileNotFoundError, match=r"'/nowhere/cs' does not exist; expected the Cityscapes layout:\n"):
        CityscapesDataset("/nowhere/cs", "train")


def test_errors_inside_dataloader_workers_reach_the_user_as_the_message(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    _edit_mask(_files(root, "labelTrainIds", "val")[0], lambda m: np.full_like(m, 77))
    ds = CityscapesDataset(root, "val")
    with pytest.raises(DatasetError) as direct:
        ds[0]
    with pytest.raises(DatasetError) as from_worker:
        next(iter(DataLoader(ds, batch_size=1, num_workers=1)))
    # torch wraps a worker's error in "Caught ... in DataLoader worker process 0. Original Traceback ...";
    # the user reads the message itself, exactly as without workers.
    assert str(from_worker.value) == str(direct.value)
    assert "invalid label value(s) [77]" in str(from_worker.value) and "Traceback" not in str(from_worker.value)


def test_dataset_check_lists_every_bad_file_before_training(tiny_root, tmp_path, capsys, monkeypatch):
    root = _copy(tiny_root, tmp_path)
    train_masks = _files(root, "labelTrainIds", "train")
    _edit_mask(train_masks[1], lambda m: np.full_like(m, 77))
    _edit_mask(train_masks[4], lambda m: m[:32])
    val_image = _files(root, "image", "val")[1]
    open(val_image, "wb").write(b"not a png")
    run_dir = tmp_path / "run"
    err = _fails([*TINY, f"dataset.root={root}", "dataset.check=true", "trainer.num_workers=1",
                  "trainer.max_iters=2", f"hydra.run.dir={run_dir}"], capsys, monkeypatch)
    assert "dataset.check: 3 of 8 samples (train, val) cannot be used:" in err
    assert f"[train] {train_masks[1]}: invalid label value(s) [77]" in err
    assert f"[train] {train_masks[4]}: mask is 128x32 but its image" in err
    assert f"[val] {val_image}: cannot read the image" in err
    assert "DataLoader worker" not in err and "Original Traceback" not in err
    assert not glob.glob(str(run_dir / "checkpoints" / "*.pt"))  # stopped before the first iteration

    # More bad files than an error shows: all of them go to the report.
    monkeypatch.setattr(check_module, "SHOWN", 1)
    report = str(tmp_path / "report.txt")
    with pytest.raises(DatasetError, match=r"\.\.\. and 2 more \(all of them in .*report.txt\)"):
        check_dataset({"train": CityscapesDataset(root, "train"), "val": CityscapesDataset(root, "val")},
                      report=report)
    assert len(open(report).read().splitlines()) == 3


def test_dataset_check_passes_a_good_dataset(tiny_root):
    assert check_dataset({"train": CityscapesDataset(tiny_root, "train"),
                          "val": CityscapesDataset(tiny_root, "val")}, workers=1) == 8


# --- bad input: configuration ----------------------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    (["head=unknown"], ["Could not override 'head=unknown': conf/head/ has no option 'unknown'. The head options: ",
                        ", cc, ", ", fcn, "]),
    (["backbone=resnet5"], ["conf/backbone/ has no option 'resnet5'. Did you mean backbone=resnet50?", "resnet50"]),
    (["dataset=kitti"], ["conf/dataset/ has no option 'kitti'. The dataset options: ade20k, cityscapes, folder, mini"]),
    (["head.name=foo"], ["head.name='foo' is not a known head; choices: fcn, ", "cbam, cc, "]),
    (["dataset.name=kitti"], ["dataset.name='kitti' is not a known dataset; choices: mini, cityscapes"]),
    (["dataset.crop_size=[0,64]"], ["dataset.crop_size=[0, 64]: expected [H, W] of positive integers"]),
    (["dataset.crop_size=[64,-1]"], ["dataset.crop_size=[64, -1]: expected [H, W] of positive integers"]),
    (["head=sge", "head.groups=5"], ["sge: groups=5 must be a positive divisor of channels=32",
                                     "set head.groups to a divisor of 32"]),
])
def test_config_mistakes_name_the_key_and_the_choices(override, expected, tiny_root, tmp_path, capsys, monkeypatch):
    err = _fails([*TINY, f"dataset.root={tiny_root}", *override, "trainer.max_iters=1",
                  f"hydra.run.dir={tmp_path}"], capsys, monkeypatch)
    for text in expected:
        assert text in err, (text, err)
    assert not glob.glob(str(tmp_path / "checkpoints" / "*.pt"))


def test_a_crop_larger_than_the_image_is_padded_with_ignore(tiny_root):
    item = CityscapesDataset(tiny_root, "train", build_train_transform([96, 160], scale_range=(1.0, 1.0)))[(0, 0)]
    assert item["image"].shape == (3, 96, 160) and item["mask"].shape == (96, 160)
    assert (item["mask"] == 255).sum() >= 96 * 160 - 64 * 128  # the padding is ignored, never a class


# --- bad input: checkpoints ------------------------------------------------------------------------

class _RunsCode:
    """Unpickling this runs os.mkdir(marker): what a crafted checkpoint would do with something worse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_crafted_pickle_cannot_run_code(tmp_path):
    marker = str(tmp_path / "code_ran")
    path = str(tmp_path / "crafted.pt")
    torch.save({"model": {"w": _RunsCode(marker)}, "iter": 1, "config": {}}, path)
    with pytest.raises(ValueError, match=r"crafted.pt' holds Python objects.*GLOBAL posix.mkdir.*weights_only=True"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"backbone.pretrained=.*crafted.pt' holds Python objects"):
        ResNet(18, width=8).load_pretrained(path)
    assert not os.path.exists(marker)
    torch.load(path, weights_only=False)  # the file really is one that runs code when unpickled
    assert os.path.isdir(marker)


def test_foreign_and_truncated_checkpoints_are_refused_in_eval_and_resume(trained_run, tiny_root, tmp_path,
                                                                          monkeypatch):
    foreign = str(tmp_path / "resnet18.pth")
    torch.save({f"layer1.{i}.conv1.weight": torch.zeros(1) for i in range(100)}, foreign)
    with pytest.raises(ValueError, match=r"is not a segattn checkpoint: expected a dict with keys \['model', 'iter', "
                                         r"'config'\], got a dict of 100 keys \(layer1.0.conv1.weight, .*, \.\.\.\)\. "
                                         r"ImageNet or open-mmlab backbone weights go to backbone.pretrained=PATH"):
        load_checkpoint(foreign)

    truncated = str(tmp_path / "last.pt")
    data = open(os.path.join(trained_run, "checkpoints", "last.pt"), "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the exception itself, not Hydra's report and exit
    with pytest.raises(ValueError, match=r"last.pt' cannot be loaded as a segattn checkpoint \(truncated"):
        run_eval([f"checkpoint={truncated}", f"hydra.run.dir={tmp_path / 'eval'}"])
    with pytest.raises(ValueError, match=r"resnet18.pth' is not a segattn checkpoint"):
        run_train([*TINY, f"dataset.root={tiny_root}", f"resume={foreign}", f"hydra.run.dir={tmp_path / 'r1'}"])
    with pytest.raises(ValueError, match=r"last.pt' cannot be loaded as a segattn checkpoint \(truncated"):
        run_train([*TINY, f"dataset.root={tiny_root}", f"resume={truncated}", f"hydra.run.dir={tmp_path / 'r2'}"])


def test_resuming_a_checkpoint_of_another_class_count_is_refused(trained_run, tmp_path, monkeypatch):
    root = tmp_path / "three"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(2):
            for sub, array in (("images", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
                               ("masks", rng.integers(0, 3, (64, 64), dtype=np.uint8))):
                os.makedirs(root / sub / split, exist_ok=True)
                Image.fromarray(array).save(root / sub / split / f"{k}.png")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match=r"has 19 classes, the dataset 3"):
        run_train([*TINY, "dataset=folder", f"dataset.root={root}", "dataset.classes=[a,b,c]",
                   "dataset.crop_size=[64,64]", f"resume={os.path.join(trained_run, 'checkpoints', 'last.pt')}",
                   f"hydra.run.dir={tmp_path / 'run'}"])


# --- faults: a kill during a checkpoint write --------------------------------------------------------

# The child rewrites last.pt in a loop, padded so that each write takes a while, until it is killed.
_WRITER = """
import sys, torch
from segattn.engine.checkpoint import load_checkpoint, save_checkpoint
path = sys.argv[1]
state = load_checkpoint(path)
state["padding"] = torch.zeros(2 ** 23)  # 32 MiB
print("ready", flush=True)
while True:
    save_checkpoint(state, path)
"""


def _kill_during_a_write(path: str) -> None:
    tmp = path + ".tmp"
    for _ in range(5):  # the kill can land between writes (after a rename): then try again
        child = subprocess.Popen([sys.executable, "-c", _WRITER, path], cwd=REPO, stdout=subprocess.PIPE)
        try:
            assert child.stdout.readline().strip() == b"ready"
            deadline = time.monotonic() + 60
            while not (os.path.exists(tmp) and os.path.getsize(tmp) > 0) and time.monotonic() < deadline:
                time.sleep(0.0005)
            child.send_signal(signal.SIGKILL)  # no handler, no cleanup: as a preempted job or the OOM killer
        finally:
            child.kill()
            child.wait()
        assert child.returncode == -signal.SIGKILL
        if os.path.exists(tmp):
            return
    pytest.fail("the child was never killed while writing a checkpoint")


def test_sigkill_during_a_checkpoint_write_loses_nothing(trained_run, tiny_root, tmp_path, capfd):
    run_dir = str(tmp_path / "run")
    shutil.copytree(os.path.join(trained_run, "checkpoints"), os.path.join(run_dir, "checkpoints"))
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    before = load_checkpoint(last)
    _kill_during_a_write(last)

    after = load_checkpoint(last)  # the previous checkpoint: intact and loadable
    assert after["iter"] == before["iter"] == 4
    assert all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["best.json", "best.pt", "best.safetensors",
                                                                   "last.pt", "last.pt.tmp"]

    # The next start removes the half-written file and resume=auto continues from the intact one.
    capfd.readouterr()
    run_train([*TINY, f"dataset.root={tiny_root}", "resume=auto", "trainer.max_iters=5", "trainer.val_interval=5",
               f"hydra.run.dir={run_dir}"])
    err = capfd.readouterr().err
    assert f"removed {last}.tmp: half-written" in err
    assert err.index("removed") < err.index(f"resumed from {last} at iteration 4")
    assert load_checkpoint(last)["iter"] == 5
    assert not glob.glob(os.path.join(run_dir, "checkpoints", "*.tmp"))
    assert clean_stale_tmp(os.path.join(run_dir, "checkpoints")) == []


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint({"model": {"w": torch.ones(3)}, "iter": 1, "config": {}}, path)

    def disk_full(state, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=r"cannot write the checkpoint .*last.pt \(OSError: \[Errno 28\] No space left "
                                      r"on device\); .* GiB are free in .*The previous last.pt, if any, is intact"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "iter": 2, "config": {}}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.pt"]  # no half-written .tmp left behind
    assert load_checkpoint(path)["iter"] == 1


# --- faults: a loss or weights that are not finite ---------------------------------------------------

def _nan_at(monkeypatch, iteration: int):
    """Make the loss of ``iteration`` (1-based) NaN, as a bad batch or an overflow would."""
    original = Segmentor.loss
    calls = []

    def loss(self, outputs, target):
        value, parts = original(self, outputs, target)
        calls.append(1)
        return (value * float("nan"), parts) if len(calls) == iteration else (value, parts)

    monkeypatch.setattr(Segmentor, "loss", loss)
    return calls


def _assert_finite(path):
    model = load_checkpoint(path)["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point()), path


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path, monkeypatch):
    _nan_at(monkeypatch, 2)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    run_dir = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"iteration 2: the loss is nan .*stopping before anything is saved\. "
                                                 r"The last good checkpoint is in .*trainer.skip_nonfinite=true"):
        run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=3", "trainer.ckpt_interval=1",
                   f"hydra.run.dir={run_dir}"])
    ckpts = run_dir / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["iter_1.pt", "last.pt"]  # nothing written after the bad iteration
    assert load_checkpoint(str(ckpts / "last.pt"))["iter"] == 1
    _assert_finite(str(ckpts / "last.pt"))


def test_skip_nonfinite_skips_only_the_bad_step(tiny_root, tmp_path, monkeypatch, capsys):
    losses = _nan_at(monkeypatch, 2)
    steps = []  # how many losses had been computed at each optimizer step
    original_step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: (steps.append(len(losses)),
                                                                         original_step(self, *a, **k))[1])
    run_dir = tmp_path / "run"
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=3", "trainer.skip_nonfinite=true",
               f"hydra.run.dir={run_dir}"])
    assert "iteration 2: non-finite loss nan, step skipped" in capsys.readouterr().err
    assert steps == [1, 3]  # no optimizer step for iteration 2, and training went on
    assert load_checkpoint(str(run_dir / "checkpoints" / "last.pt"))["iter"] == 3
    for name in ("last.pt", "best.pt"):
        _assert_finite(str(run_dir / "checkpoints" / name))


def test_a_step_that_breaks_the_weights_is_never_saved(tiny_root, tmp_path, monkeypatch):
    # The loss of iteration 1 is finite; its update (lr = inf) is not: caught when saving, not later.
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    run_dir = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"not writing .*iter_1.pt: the model's backbone.conv1.weight holds "
                                                 r"NaN or infinite values at iteration 1, so training has diverged"):
        run_train([*TINY, f"dataset.root={tiny_root}", "optimizer.lr=inf", "trainer.max_iters=4",
                   "trainer.ckpt_interval=1", f"hydra.run.dir={run_dir}"])
    assert os.listdir(run_dir / "checkpoints") == []


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    path = str(tmp_path / "last.pt")
    good = {"model": {"conv.weight": torch.ones(2), "bn.running_var": torch.ones(2)}, "iter": 6, "config": {}}
    save_checkpoint(good, path)
    bad = {"model": {"conv.weight": torch.ones(2), "bn.running_var": torch.tensor([1.0, float("inf")])},
           "iter": 7, "config": {}}
    with pytest.raises(FloatingPointError, match=r"not writing .*last.pt: the model's bn.running_var holds NaN or "
                                                 r"infinite values at iteration 7.*trainer.grad_clip"):
        save_checkpoint(bad, path)
    assert os.listdir(tmp_path) == ["last.pt"] and load_checkpoint(path)["iter"] == 6


# --- faults: the disk ----------------------------------------------------------------------------

def test_a_full_disk_fails_at_start_up(tiny_root, tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: real(p)._replace(free=20 * 2**20))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(OSError, match=r"only 20.0 MiB free on the disk of the run directory .*, but this run needs "
                                      r"about .*: it holds up to 6 checkpoints of about .* MiB at once \(last.pt, "
                                      r"best.pt, 3 iter_<N>.pt and the one being written\)"):
        run_train([*TINY, f"dataset.root={tiny_root}", "trainer.ckpt_interval=2", f"hydra.run.dir={tmp_path}"])
    assert not os.listdir(tmp_path / "checkpoints")


def test_an_unwritable_run_directory_fails_at_start_up(tiny_root, tmp_path, monkeypatch):
    # Tests may run as root, whom permissions do not stop: refuse writes below checkpoints/ instead.
    blocked = str(tmp_path / "checkpoints")
    real_open = open

    def read_only_open(file, mode="r", *args, **kwargs):
        if str(file).startswith(blocked) and any(c in mode for c in "wax+"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_open)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(OSError, match=r"the run directory .* is not writable \(Permission denied\); set hydra.run.dir "
                                      r"to a writable folder"):
        run_train([*TINY, f"dataset.root={tiny_root}", f"hydra.run.dir={tmp_path}"])
    assert not os.path.exists(tmp_path / "run_info.json")  # stopped before anything else


def test_the_checkpoint_size_estimate_fits_a_real_checkpoint(trained_run):
    path = os.path.join(trained_run, "checkpoints", "last.pt")
    model, ckpt = model_from_checkpoint(path)
    estimate = preflight.checkpoint_bytes(model, ckpt["config"]["optimizer"]["name"])
    assert 0.8 < estimate / os.path.getsize(path) < 1.25
    assert preflight.checkpoint_copies({"max_iters": 100, "ckpt_interval": 10, "keep_ckpts": 0}) == 13
    assert preflight.checkpoint_copies({"max_iters": 100, "ckpt_interval": 10, "keep_ckpts": 3}) == 6
    assert preflight.checkpoint_copies({"max_iters": 100, "ckpt_interval": 200, "keep_ckpts": 3}) == 3
    assert preflight.checkpoint_copies({"max_iters": 100, "ckpt_interval": 0, "keep_ckpts": 3}) == 3


# --- reproducibility -------------------------------------------------------------------------------

def test_the_run_records_seed_versions_and_commit(trained_run):
    import albumentations
    import torchvision

    info = json.load(open(os.path.join(trained_run, "run_info.json")))
    assert info["seed"] == 0
    v = info["versions"]
    assert v["torch"] == torch.__version__ and torchvision.__version__.startswith(v["torchvision"])
    assert v["albumentations"] == albumentations.__version__ and v["python"] == sys.version.split()[0]
    assert v["hydra-core"].startswith("1.3")
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        head = ""
    if head and os.path.isdir(os.path.join(REPO, ".git")):
        assert info["git"]["commit"] == head and isinstance(info["git"]["dirty"], bool)
    else:
        assert info["git"] == {"commit": "unknown", "dirty": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_state_names_the_commit_the_dirty_flag_or_unknown(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "a.py"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "a"], check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert preflight.git_state(str(repo)) == {"commit": commit, "dirty": False}
    (repo / "a.py").write_text("x = 2\n")
    assert preflight.git_state(str(repo)) == {"commit": commit, "dirty": True}
    (repo / "sub").mkdir()  # not the top of a checkout: not this checkout's commit to report
    assert preflight.git_state(str(repo / "sub")) == {"commit": "unknown", "dirty": None}
    assert preflight.git_state(str(tmp_path)) == {"commit": "unknown", "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    assert preflight.git_state(str(repo)) == {"commit": "unknown", "dirty": None}


def test_a_resumed_run_keeps_the_earlier_start_in_run_info(tmp_path):
    first = preflight.write_run_info(str(tmp_path), {"seed": 3})
    second = preflight.write_run_info(str(tmp_path), {"seed": 3, "resume": "auto"})
    saved = json.load(open(tmp_path / "run_info.json"))
    assert saved == json.loads(json.dumps(second)) and saved["resume"] == "auto"
    assert saved["earlier"] == [json.loads(json.dumps(first))]
    assert os.listdir(tmp_path) == ["run_info.json"]  # written through a temp file, nothing left over
