"""A new user's first hour, third pass (issue 34, items 5-10), through the entry points as typed
(in-process): exports fit any image size by default and load under any name, printed commands run as
printed, run folder names stay whole, eval.py says what it evaluated and what it wrote, a misspelt
group option gets a suggestion.
"""

import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

import segattn
from segattn.deploy import load_exported

from conftest import _run_hydra_main


def _export(argv):
    return _run_hydra_main("export", argv)


# ------------------------------------------------------------------------------------ 5. exports


def test_default_export_takes_any_size_loads_under_any_name_and_gives_plain_tensors(trained_run, tmp_path, capsys):
    ckpt = shutil.copy(os.path.join(trained_run, "checkpoints", "best.pt"), tmp_path / "best.pt")
    model = segattn.load(ckpt)
    x = torch.randn(1, 3, 96, 160)  # not the training crop (64x64)
    capsys.readouterr()
    for fmt, name in (("torchscript", "model.bin"),):  # exported_program's default: tests/test_first_hour.py
        _export([f"checkpoint={ckpt}", f"format={fmt}", f"output={tmp_path / name}"])
        assert f"({fmt}, dynamic sizes: batch, height and width 64-4096 px)" in capsys.readouterr().out
        assert json.load(open(tmp_path / f"{name}.json"))["dynamic"] is True
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = load_exported(str(tmp_path / name))  # the format from the JSON beside it, not the name
            out = run(x)
        assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
        assert not out.requires_grad and out.shape == (1, model.num_classes, 96, 160)
        np.testing.assert_allclose(out.numpy(), model.model.predict(x).numpy(), atol=1e-4)
    # Custom class names are not drawn in Cityscapes' colours (item 10), whatever their count.
    from segattn.data.labels import palette_for
    from segattn.deploy import export_model

    names = [f"part{i}" for i in range(model.num_classes)]
    info = export_model(model.model, str(tmp_path / "bare.ts"), "torchscript", (64, 64), meta={"classes": names})
    assert info["palette"] == palette_for(len(names), names)[:len(names)].tolist() != model.palette.tolist()
    os.remove(tmp_path / "model.bin.json")
    with pytest.raises(ValueError, match=r"cannot tell the format: no model.bin.json beside it"):
        load_exported(str(tmp_path / "model.bin"))


def test_a_head_that_cannot_export_dynamic_sizes_exports_fixed_and_says_why(trained_run, tmp_path, capsys,
                                                                             monkeypatch):
    from segattn import deploy

    monkeypatch.setattr(deploy, "export_limits", lambda head: ({"torchscript": "a test's reason"}, {}))
    ckpt = os.path.join(trained_run, "checkpoints", "best.pt")
    _export([f"checkpoint={ckpt}", "format=torchscript", f"output={tmp_path / 'm.pt'}"])
    assert (f"wrote {tmp_path / 'm.pt'} (torchscript, fixed input 64x64, not dynamic: head=fcn as torchscript: "
            f"a test's reason) and ") in capsys.readouterr().out
    assert json.load(open(tmp_path / "m.pt.json"))["dynamic"] is False


# ------------------------------------------------------------------------------------ 6. printed commands


def test_the_printed_tensorboard_command_runs_as_printed(trained_run, monkeypatch):
    import subprocess

    from segattn.engine.trackers import command

    line = next(ln for ln in open(os.path.join(trained_run, "train.log")).read().splitlines()
                if ln.startswith("TensorBoard: "))
    printed = line.removeprefix("TensorBoard: ").split(" --logdir ")[0]
    assert line == f"TensorBoard: {printed} --logdir {trained_run}"
    # From this shell (the test's PATH and folder), as printed; --version instead of serving.
    out = subprocess.run(f"{printed} --version", shell=True, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    # Without the venv on PATH: the venv's own tensorboard by its path.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    path = command("tensorboard")
    assert os.path.isfile(path) and os.access(path, os.X_OK) and path.endswith(os.path.join("bin", "tensorboard"))


# ------------------------------------------------------------------------------------ 7. run folder names


def test_run_folder_names_are_short_and_whole_with_every_override_in_the_run(tiny_root, tmp_path, monkeypatch):
    import glob

    import yaml

    from conftest import TINY, run_train
    from segattn.cli import RUN_NAME_MAX, run_name

    monkeypatch.chdir(tmp_path)
    argv = [*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=1", "trainer.val_interval=1", "optimizer.lr=0.02"]
    run_train(argv)
    (run,) = glob.glob("outputs/*/*")
    name = os.path.basename(run)[len("14-03-59_"):]
    assert len(name) <= RUN_NAME_MAX and name.startswith("fcn_resnet18_seed0_"), name
    for whole in ("max_iters-1", "val_interval-1", "lr-0.02", "width-16"):
        assert f"_{whole}_" in name + "_", name  # never cut inside a key or value
    assert re.fullmatch(r".*_\d-more-[0-9a-f]{6}", name) and "tiny_cityscapes" not in name, name  # the long root
    assert sorted(yaml.safe_load(open(os.path.join(run, ".hydra", "overrides.yaml")))) == sorted(argv)
    # Overrides with commas inside brackets stay one entry each; a different left-out value, another name.
    o = "dataset.classes=[bg,rect,circle],dataset.crop_size=[64,96],dataset=folder,trainer.max_iters=200"
    assert run_name("fcn", "resnet18", None, None, 0, o) == \
        "fcn_resnet18_seed0_max_iters-200_dataset-folder_crop_size-64-96_classes-bg-rect-circle"
    a = run_name("fcn", "resnet18", None, None, 0, o + ",dataset.root=/data/" + "x" * 80)
    b = run_name("fcn", "resnet18", None, None, 0, o + ",dataset.root=/data/" + "y" * 80)
    assert a != b and len(a) <= RUN_NAME_MAX and "_max_iters-200_" in a and "_2-more-" in a
    # Keys that share their last part keep their full names.
    assert run_name("fcn", "resnet18", None, None, 0, "head.channels=32,model.aux_head.channels=16") == \
        "fcn_resnet18_seed0_head.channels-32_model.aux_head.channels-16"


# ------------------------------------------------------------------------------------ 8. eval.py


def test_eval_says_what_it_evaluates_first_and_names_every_file_it_wrote_last(trained_run, tmp_path, capsys):
    from conftest import run_eval

    ckpt = os.path.join(trained_run, "checkpoints", "best.pt")
    run = tmp_path / "eval"
    capsys.readouterr()
    run_eval([f"checkpoint={ckpt}", "inference.mode=slide", "inference.flip=true", "num_workers=0",
              f"hydra.run.dir={run}"])
    err = capsys.readouterr().err.splitlines()
    first = next(ln for ln in err if ln.startswith("evaluating "))
    assert first.startswith(f"evaluating {ckpt} (iteration 4, head=fcn) on dataset mini at ") and \
        first.endswith("(split val): 2 images, inference slide: windows 64x64, stride 43x43, flip"), first
    files = sorted(f for f in os.listdir(run) if not f.startswith(".") and f != "eval.log")
    last = [ln for ln in err if ln.startswith("wrote ")]
    assert err[-len(last):] == last and sorted(ln.removeprefix(f"wrote {run}/") for ln in last) == files, (err, files)
    assert files == ["confusion_matrix.csv", "confusion_matrix.png", "eval.json", "per_image.csv"]


# ------------------------------------------------------------------------------------ 9. group options


def test_a_misspelt_group_option_gets_one_paragraph_with_a_suggestion(capsys, tmp_path, monkeypatch):
    from conftest import run_train

    monkeypatch.chdir(tmp_path)
    for argv, line, hint in ((["head=ccc"], "head=ccc", "Did you mean head=cc? The head options: ann, apc, "),
                             (["+experiment=cc_r50_d8_cityscapes_80"], "+experiment=cc_r50_d8_cityscapes_80",
                              "Did you mean +experiment=cc_r50_d8_cityscapes_80k? The experiment options: ")):
        with pytest.raises(SystemExit) as exc:
            run_train(argv)
        message = exc.value.code
        assert isinstance(message, str) and message.startswith(f"Could not override '{line}': conf/") and \
            hint in message and "\n" not in message and "search path" not in message, message
        assert not os.path.exists(tmp_path / "outputs")  # before Hydra made a run folder


# ------------------------------------------------------------------------------------ 10. small ones


def _refusal(run, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" not in err, err
    return err


def test_folder_root_resume_auto_and_class_list_messages_name_what_the_user_typed(tiny_root, tmp_path, capsys,
                                                                                     monkeypatch):
    from PIL import Image

    from conftest import TINY, run_eval, run_train

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        os.makedirs(f"shapes/images/{split}")
        os.makedirs(f"shapes/masks/{split}")
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(f"shapes/images/{split}/{i}.png")
            Image.fromarray(rng.integers(0, 3, (64, 64), dtype=np.uint8)).save(f"shapes/masks/{split}/{i}.png")
    folder = [*TINY, "dataset=folder", "dataset.classes=[bg,rect,circle]", "trainer.max_iters=1"]
    # a missing folder root names dataset.root first
    err = _refusal(run_train, [*folder, "dataset.root=shape", "hydra.run.dir=run0"], capsys)
    assert "train.py: error: dataset.root='shape' does not exist for split 'train': image folder" in err, err
    run_train([*folder, "dataset.root=shapes", "hydra.run.dir=run"])
    # all three names, no "..." after them
    err = _refusal(run_eval, ["checkpoint=run/checkpoints/best.pt", f"dataset.root={tiny_root}", "dataset.name=mini",
                              "hydra.run.dir=eval"], capsys)
    assert "predicts 3 classes (trained on folder: bg, rect, circle) but dataset mini" in err, err
    # a truncated last.pt found by resume=auto is reported under resume, the key typed
    last = "run/checkpoints/last.pt"
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) // 2)
    err = _refusal(run_train, [*folder, "dataset.root=shapes", "hydra.run.dir=run", "trainer.max_iters=2",
                               "resume=auto"], capsys)
    assert f"train.py: error: resume={os.path.abspath(last)!r} cannot be loaded" in err or \
        f"train.py: error: resume={last!r} cannot be loaded" in err, err


def test_a_refused_run_removes_only_the_folders_made_for_it(tmp_path, capsys, monkeypatch):
    from conftest import run_eval, run_train

    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    _refusal(run_train, ["trainer.batch_size=0", "hydra.run.dir=run"], capsys)
    assert here.is_dir() and os.listdir(here) == []  # the working directory stays, though empty
    _refusal(run_eval, [f"checkpoint={tmp_path / 'missing.pt'}"], capsys)
    assert os.listdir(here) == []  # and no empty outputs/eval/
    os.makedirs("outputs/eval/keep")
    _refusal(run_eval, [f"checkpoint={tmp_path / 'missing.pt'}"], capsys)
    assert sorted(os.listdir("outputs/eval")) == ["keep"]
