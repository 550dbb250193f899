"""A new user's first hour, second pass, through the entry points as typed (in-process; a process only
where one is the point): a run that cannot fit in memory refuses before its first step, numbers out
of range and a resume of another model name their key, the console is kept in train.log with
mmsegmentation's log-line facts, a refused run leaves no folder behind, a bad label suggests
dataset.check, exports keep one JSON per file, predict takes the arrays a user has, and study.py
takes any train.py override.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import segattn
from segattn.data import synthetic
from segattn.engine import memory

from conftest import REPO, TINY, run_eval, run_train


def _refused(run, argv, capsys, *patterns):
    """``run(argv)`` exits with status 1 and one paragraph holding ``patterns``, no traceback; returns it."""
    with pytest.raises(SystemExit) as exc:
        run(argv)
    err = capsys.readouterr().err
    message = str(exc.value.code) if isinstance(exc.value.code, str) else err
    assert exc.value.code == 1 or isinstance(exc.value.code, str), (exc.value.code, err)
    for p in patterns:
        assert p in message, (p, message)
    assert "Traceback" not in err
    return message


@pytest.fixture
def base(tiny_root, tmp_path):
    return [*TINY, f"dataset.root={tiny_root}", f"hydra.run.dir={tmp_path / 'run'}"]


def _compose(overrides):
    sys.path.insert(0, REPO)
    from benchmarks.common import compose_config

    return compose_config(overrides)


# ------------------------------------------------------------------------------------ 1. memory

# Run in a fresh process: a warm-up step on another instance first (the first step pages in kernel code
# and sets up oneDNN, about 190 MiB that are not the step's), then the peak resident set (VmHWM, reset
# through /proc/self/clear_refs) of two training steps of a new model, over the resident set before it.
_PEAK = r"""
import json, sys
import torch
torch.set_num_threads(2)
from segattn.models import build_model_from_config
from segattn.engine.trainer import train_step
from segattn.engine.optim import build_optimizer

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

cfg, k = json.loads(sys.argv[1]), int(sys.argv[2])
b, (h, w) = cfg["trainer"]["batch_size"], cfg["dataset"]["crop_size"]
warm = build_model_from_config(cfg, k, pretrained=False).train()
train_step(warm, {"image": torch.randn(2, 3, 64, 64), "mask": torch.randint(0, k, (2, 64, 64))},
           build_optimizer(warm, **cfg["optimizer"]))
del warm
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
images, masks = torch.randn(b, 3, h, w), torch.randint(0, k, (b, h, w))
model = build_model_from_config(cfg, k, pretrained=False).train()
optimizer = build_optimizer(model, **cfg["optimizer"])
for _ in range(2):
    train_step(model, {"image": images, "mask": masks}, optimizer)
print(json.dumps({"peak": status("VmHWM") - base}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc to measure the peak")
def test_memory_estimate_is_within_30_percent_of_the_measured_peak_on_the_cpu():
    cfg = _compose(["backbone.width=16", "head.channels=32", "model.aux_head.channels=16",
                    "dataset.crop_size=[192,192]", "trainer.batch_size=4", "trainer.num_workers=0"])
    est = memory.estimate_training_step(cfg, 19)
    out = subprocess.run([sys.executable, "-c", _PEAK, json.dumps(cfg), "19"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    assert 0.7 <= est.peak / measured <= 1.3, (est, measured)


def test_memory_estimate_works_for_the_default_model():
    est = memory.estimate_training_step(_compose([]), 19)
    # ResNet-18-D8 + FCN (21 M parameters), 8 crops of 128x128: measured about 385 MiB resident.
    assert est.weights == pytest.approx(81 * 2**20, rel=0.05) and est.optimizer < est.weights
    assert 250 * 2**20 < est.peak < 600 * 2**20, est
    # A recipe's SyncBN model is counted as the one process trains it (plain BN), on meta as well.
    recipe = _compose(["+experiment=cityscapes_r50_d8_80k", "backbone.width=8", "head.channels=16",
                       "model.aux_head.channels=8", "dataset.crop_size=[64,64]"])
    assert memory.estimate_training_step(recipe, 19).activations > 0


def test_a_run_that_cannot_fit_stops_before_its_first_step(base, tmp_path, capsys, monkeypatch):
    cfg = _compose(TINY)
    est = memory.estimate_training_step(cfg, 19)
    fixed = est.fixed * memory.ALLOCATOR_SLACK  # what does not grow with the batch: room for one crop more
    monkeypatch.setattr(memory, "available_bytes",
                        lambda device: (int(fixed + 0.6 * (est.peak - fixed)), "MemAvailable in /proc/meminfo"))
    monkeypatch.setattr(memory, "_ESTIMATES", {})
    msg = _refused(run_train, base, capsys, "train.py: error: out of memory ahead: one training step needs about",
                   "for trainer.batch_size=2 of dataset.crop_size=[64,64]", "available (MemAvailable in /proc/meminfo)",
                   "What fits:", "trainer.check_memory=false")
    assert "What fits: trainer.batch_size=1 with trainer.grad_accum=2 (the same effective batch of 2)" in msg
    assert not (tmp_path / "run").exists()  # refused: no run directory left behind (item 9)
    # The batch it names does fit: with it the check passes.
    monkeypatch.setattr(memory, "available_bytes", lambda device: (int(fixed + 0.6 * (est.peak - fixed)), "test"))
    monkeypatch.setitem(cfg["trainer"], "batch_size", 1)
    assert memory.check_training_memory(cfg, 19, torch.device("cpu")) is not None


# ------------------------------------------------------------------------------------ 4, 5. numbers


@pytest.mark.parametrize("override, expected", [
    ("trainer.batch_size=0", "trainer.batch_size=0: expected a whole number >= 1"),
    ("optimizer.lr=-1", "optimizer.lr=-1.0: expected a learning rate >= 0"),
    ("trainer.max_iters=0", "trainer.max_iters=0: expected a whole number >= 1"),
    ("trainer.val_interval=0", "trainer.val_interval=0: expected a whole number >= 1"),
])
def test_numbers_out_of_range_name_their_key(base, tmp_path, capsys, override, expected):
    msg = _refused(run_train, [*base, override], capsys, expected)
    assert "metrics.json" not in msg and "ZeroDivisionError" not in msg and not (tmp_path / "run").exists()


def test_resume_of_another_head_names_what_differs(base, trained_run, tmp_path, capsys):
    last = os.path.join(trained_run, "checkpoints", "last.pt")
    _refused(run_train, [*base, "head=da", f"resume={last}"], capsys,
             f"resume={last!r} does not fit this run: head=da here, fcn in the checkpoint",
             f"model.init_from={last}")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ 6. labels


def test_a_bad_label_suggests_dataset_check_which_lists_every_bad_file(tmp_path, capsys):
    root = str(tmp_path / "bad")
    synthetic.generate(root, size=(64, 128), splits={"train": ("aachen", 4), "val": ("frankfurt", 1)})
    bad = sorted(glob.glob(f"{root}/gtFine/train/*/*_labelTrainIds.png"))[:2]
    for path in bad:
        mask = np.array(Image.open(path))
        mask[0, :3] = 200
        Image.fromarray(mask).save(path)
    argv = [*TINY, f"dataset.root={root}", "trainer.max_iters=4", f"hydra.run.dir={tmp_path / 'run'}"]
    msg = _refused(run_train, argv, capsys, "invalid label value(s) [200]", "dataset.check=true")
    assert sum(p in msg for p in bad) == 1
    msg = _refused(run_train, [*argv, "dataset.check=true"], capsys, "dataset.check: 2 of 5 samples", *bad)


# ------------------------------------------------------------------------------------ 7. train.log


def test_the_console_is_kept_in_train_log_with_mmseg_log_line_facts(trained_run):
    log = open(os.path.join(trained_run, "train.log")).read()
    assert f"run directory: {trained_run}" in log and "iter 4: val mIoU" in log and "mIoU" in log
    line = next(ln for ln in log.splitlines() if ln.startswith("iter 2/4  loss "))
    assert re.fullmatch(r"iter 2/4  loss \d+\.\d{4}  lr \S+  time \d+\.\d{3} s/it  data \d+\.\d{3} s/it  "
                        r"eta \d+:\d\d:\d\d  memory \d+ MiB", line), line
    assert "\r" not in log  # progress bars stay on the console


# ------------------------------------------------------------------------------------ 9. folders


def test_a_refused_eval_or_train_leaves_no_folder(tmp_path, tiny_root, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(run_eval, [f"checkpoint={tmp_path / 'missing.pt'}"], capsys, "missing.pt")
    assert not glob.glob(str(tmp_path / "outputs" / "eval" / "*" / "*"))
    _refused(run_train, [*TINY, f"dataset.root={tiny_root}", "trainer.batch_size=0"], capsys, "trainer.batch_size=0")
    assert not os.path.exists(tmp_path / "outputs")  # nor an empty outputs/eval/ (issue 34, item 10)


# ------------------------------------------------------------------------------------ 3. study.py


def _study():
    import importlib.util

    spec = importlib.util.spec_from_file_location("study", os.path.join(REPO, "scripts", "study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_takes_any_train_override_in_its_default_folder_name(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = _study()
    # A failed study leaves no folder behind (item 9): every run is refused here.
    with pytest.raises(SystemExit, match="no run of studies/fcn_.* finished"):
        study.main(["heads=[fcn]", "seeds=1", *TINY, f"dataset.root={tiny_root}", "trainer.batch_size=0"])
    assert not os.path.exists(tmp_path / "studies")
    # The default out= is built from the overrides ('=', brackets): Hydra must still parse hydra.sweep.dir.
    readme = study.main(["heads=[fcn]", "seeds=1", "speed_steps=0", "points=0", *TINY, f"dataset.root={tiny_root}",
                         "trainer.max_iters=2", "trainer.val_interval=2"])
    out = os.path.dirname(os.path.dirname(readme))
    assert os.path.dirname(out) == "studies" and "_backbone.width-16_" in out and "=" not in out
    assert os.path.isfile(os.path.join(out, "runs", "fcn_seed0", "checkpoints", "last.pt"))


# ------------------------------------------------------------------------------------ 8. export


def _export(argv):
    from conftest import _run_hydra_main

    return _run_hydra_main("export", argv)


def test_each_exported_file_keeps_its_own_json_and_export_is_quiet(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = shutil.copy(os.path.join(trained_run, "checkpoints", "best.pt"), tmp_path / "best.pt")
    capsys.readouterr()
    for fmt, suffix in (("exported_program", ".pt2"), ("torchscript", ".torchscript.pt")):
        _export([f"checkpoint={ckpt}", f"format={fmt}"])
        out = capsys.readouterr()
        assert out.out.splitlines() == [f"wrote {tmp_path}/best{suffix} ({fmt}, dynamic sizes: batch, height and "
                                        f"width 64-4096 px) and {tmp_path}/best{suffix}.json"] and out.err == "", out
    assert json.load(open(tmp_path / "best.pt2.json"))["format"] == "exported_program"
    assert json.load(open(tmp_path / "best.torchscript.pt.json"))["format"] == "torchscript"
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "best.pt2", "best.pt2.json", "best.torchscript.pt",
                                            "best.torchscript.pt.json"]  # and no run folder


def test_onnx_export_of_an_attention_head_prints_one_line(tiny_root, tmp_path, capfd):
    pytest.importorskip("onnxscript")
    run = tmp_path / "da"
    run_train([*TINY, f"dataset.root={tiny_root}", "head=da", "trainer.max_iters=1", f"hydra.run.dir={run}"])
    capfd.readouterr()
    _export([f"checkpoint={run}/checkpoints/best.pt", "format=onnx"])
    out = capfd.readouterr()
    assert len(out.out.splitlines()) == 1 and "[INFO]" not in out.out + out.err, out


# ------------------------------------------------------------------------------------ 10. predict


def test_predict_takes_float_gray_and_rgba_arrays_as_it_takes_files(trained_run, tmp_path):
    model = segattn.load(os.path.join(trained_run, "checkpoints", "best.pt"))
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    gray, alpha = rgb[..., 0], np.full((40, 56, 1), 7, np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.concatenate([rgb, alpha], 2)).save(tmp_path / "rgba.png")
    same = model.predict(rgb)
    np.testing.assert_array_equal(model.predict(rgb / 255.0), same)  # float in [0, 1]
    np.testing.assert_array_equal(model.predict(rgb.astype(np.float32) / 255), same)
    np.testing.assert_array_equal(model.predict(np.concatenate([rgb, alpha], 2)), same)  # RGBA: alpha dropped
    np.testing.assert_array_equal(model.predict(np.concatenate([rgb, alpha], 2)), model.predict(tmp_path / "rgba.png"))
    for g in (gray, gray[..., None], gray / 255.0):  # gray: as the file and as PIL's "L" image
        np.testing.assert_array_equal(model.predict(g), model.predict(str(tmp_path / "gray.png")))
    np.testing.assert_array_equal(model.predict(gray), model.predict(Image.fromarray(gray)))
    with pytest.raises(ValueError, match=r"image: a float array must hold values in \[0, 1\], got 0 to 255"):
        model.predict(rgb.astype(np.float64))
    with pytest.raises(ValueError, match=r"image: expected an H x W x 3 RGB, H x W gray or H x W x 4 RGBA array"):
        model.predict(rgb[..., :2])


# ------------------------------------------------------------------------------------ 11. README


def test_readme_shows_single_image_eval_and_printing_the_config(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "eval.py checkpoint=outputs/<run>/checkpoints/best.pt images=photo.jpg" in readme
    assert "train.py --cfg job" in readme
    run_train(["--cfg", "job", "head=cc"])  # prints the composed config, trains nothing
    out = capsys.readouterr().out
    assert "max_iters: 80" in out and "name: cc" in out and "init: pytorch" in out
