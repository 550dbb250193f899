"""A newcomer's first hour, run the way the user typed it: stopping and resuming without losing the run,
and every mistake ending in one short paragraph that names the key and the fix (no traceback).

The entry points run in-process (tests/conftest.py); the SIGTERM test starts a process, since a
signal from outside is the point.
"""

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import segattn
import segattn.engine.trainer as trainer_mod
from segattn.engine.checkpoint import load_checkpoint

from conftest import REPO, TINY, run_eval, run_train


def _fails_cleanly(run, argv, capsys, *patterns, code=1):
    """``run(argv)`` exits with ``code`` and prints one paragraph matching ``patterns``, no traceback."""
    with pytest.raises(SystemExit) as exc:
        run(argv)
    err = capsys.readouterr().err
    message = err if exc.value.code == code else str(exc.value.code)  # SystemExit("...") carries its text
    assert exc.value.code == code or isinstance(exc.value.code, str), (exc.value.code, err)
    for p in patterns:
        assert p in message, (p, message)
    assert "Traceback" not in err and 'File "' not in err
    return message


@pytest.fixture
def base(tiny_root, tmp_path):
    return [*TINY, f"dataset.root={tiny_root}", f"hydra.run.dir={tmp_path / 'run'}"]


# ------------------------------------------------------------------------------------ stopping


def test_ctrl_c_finishes_the_step_saves_last_pt_and_says_how_to_continue(base, tmp_path, capsys, monkeypatch):
    real_step, calls = trainer_mod.train_step, []

    def step_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        out = real_step(*args, **kwargs)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C during the second iteration
        return out

    monkeypatch.setattr(trainer_mod, "train_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN when the suite runs as a background job
    argv = [*base, "trainer.max_iters=6", "trainer.val_interval=100", "trainer.num_workers=2"]
    msg = _fails_cleanly(run_train, argv, capsys, "stopped by SIGINT after iteration 2/6",
                         f"resume=auto hydra.run.dir={tmp_path / 'run'}", code=130)
    assert "checkpoints/last.pt" in msg
    assert load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.pt"))["iter"] == 2  # before any validation
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    monkeypatch.setattr(trainer_mod, "train_step", real_step)
    run_train([*argv, "resume=auto"])
    err = capsys.readouterr().err
    assert "resumed from" in err and "at iteration 2" in err
    assert load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.pt"))["iter"] == 6


def test_sigterm_from_outside_saves_and_exits_143(tiny_root, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO, "train.py"), *TINY, f"dataset.root={tiny_root}",
           "trainer.max_iters=500", "trainer.val_interval=1000", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # set-up done: the loop is about to start
        if line.startswith("run directory:"):
            break
    proc.send_signal(signal.SIGTERM)  # Slurm preemption, `timeout`
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM after iteration" in err and "resume=auto" in err and "Traceback" not in err
    assert 1 <= load_checkpoint(str(run_dir / "checkpoints" / "last.pt"))["iter"] < 500


def test_resume_auto_without_a_checkpoint_says_so(base, tmp_path, capsys):
    run_train([*base, "trainer.max_iters=1", "resume=auto"])
    err = capsys.readouterr().err
    assert f"resume=auto: no checkpoint in {tmp_path / 'run' / 'checkpoints'}, starting from iteration 0" in err
    # and the run says where its files are
    assert f"run directory: {tmp_path / 'run'}" in err
    assert f"tensorboard --logdir {tmp_path / 'run'}" in err and "last.pt" in err and "metrics.json" in err


# ------------------------------------------------------------------------------------ mistakes


def test_head_name_instead_of_the_head_group(base, capsys):
    _fails_cleanly(run_train, [*base, "head.name=cc"], capsys, "head.num_convs", "head=cc, not head.name=cc")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(base, capsys):
    _fails_cleanly(run_train, [*base, "trainer.device=cuda"], capsys, "trainer.device=cuda", "no CUDA GPU",
                   "auto")


def test_sk_with_one_image_per_process(base, capsys):
    _fails_cleanly(run_train, [*base, "head=sk", "trainer.batch_size=1", "trainer.max_iters=1"], capsys,
                   "sk:", "at least 2 images", "trainer.batch_size")


def test_run_dir_under_a_file(base, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _fails_cleanly(run_train, [*base, f"hydra.run.dir={blocker}/run"], capsys, "hydra.run.dir=", "is a file")


def test_run_dir_that_cannot_be_created(base, capsys):
    _fails_cleanly(run_train, [*base, "hydra.run.dir=/proc/segattn_run"], capsys, "hydra.run.dir=/proc/segattn_run",
                   "cannot be written", "writable folder")


def test_max_iters_not_a_number(base, capsys):
    _fails_cleanly(run_train, [*base, "trainer.max_iters=ten"], capsys, "trainer.max_iters")


def test_eval_without_checkpoint(tmp_path, capsys):
    _fails_cleanly(run_eval, [f"hydra.run.dir={tmp_path}"], capsys, "checkpoint=PATH is required")


def test_eval_slide_without_windows_uses_the_training_crop_as_predict_does(trained_run, tmp_path):
    # eval.py and segattn.load(...).predict agree: a slide without a window takes the training crop,
    # windows 2/3 of it apart (refused only where the checkpoint records no crop: inference_kwargs).
    ckpt = os.path.join(trained_run, "checkpoints", "last.pt")
    run_eval([f"checkpoint={ckpt}", "inference.mode=slide", f"hydra.run.dir={tmp_path}", "progress=false"])
    used = json.load(open(tmp_path / "eval.json"))["inference"]
    assert used["crop_size"] == [64, 64] and used["stride"] == [43, 43]
    assert segattn.load(ckpt).settings("slide")["stride"] == used["stride"]


def test_eval_one_image_file(trained_run, tiny_root, tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(photo)
    ckpt = os.path.join(trained_run, "checkpoints", "last.pt")
    run_eval([f"checkpoint={ckpt}", f"images={photo}", f"export_dir={tmp_path / 'pred'}", "export_format=trainids",
              f"hydra.run.dir={tmp_path / 'eval'}", "progress=false"])
    assert os.listdir(tmp_path / "pred") == ["photo_labelTrainIds.png"]
    assert np.asarray(Image.open(tmp_path / "pred" / "photo_labelTrainIds.png")).shape == (40, 56)
    assert f"wrote {tmp_path / 'eval' / 'eval.json'}" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("x")
    _fails_cleanly(run_eval, [f"checkpoint={ckpt}", f"images={text}", f"export_dir={tmp_path / 'p2'}",
                              f"hydra.run.dir={tmp_path / 'eval2'}"], capsys, "is a file but not an image")


def test_resume_from_best_pt_points_to_last_pt(trained_run, base, capsys):
    best = os.path.join(trained_run, "checkpoints", "best.pt")
    _fails_cleanly(run_train, [*base, f"resume={best}"], capsys, "holds the weights only", "last.pt",
                   f"model.init_from={best}")


def test_run_folder_names_what_tells_runs_apart():
    from segattn.cli import run_name

    assert run_name("cc", "resnet50", None, None, 0, "") == "cc_resnet50_seed0"
    assert run_name("fcn", "resnet18", "se", [1.0, 0.75], 3,
                    "backbone.block_attention=se,optimizer.lr=0.02,seed=3,trainer.progress=false") == \
        "fcn_resnet18_se-blocks_scales1-0.75_seed3_lr-0.02"  # no '=' or ',': the path stays an override
    many = run_name("cc", "resnet50", None, None, 0, ",".join(f"k{i}=v" for i in range(100)))
    assert len(many) <= 100 and re.fullmatch(r"cc_resnet50_seed0(_k\d+-v)+_\d+-more-[0-9a-f]{6}", many), many
