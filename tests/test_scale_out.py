"""Scaling out: torchrun DDP on CPU (gloo), multirun sweeps, the Slurm launcher config, AMP and friends."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from segattn.engine.checkpoint import load_checkpoint

from conftest import REPO, TINY, run_eval, run_train


def _losses(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return [s.value for s in acc.Scalars("train/loss")]


@pytest.fixture(scope="module")
def ddp_run(tiny_root, tmp_path_factory):
    """A 2-process CPU (gloo) run under torchrun, from a fresh working directory with the default run dir."""
    cwd = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO, "train.py"), *TINY, f"dataset.root={tiny_root}", "trainer.max_iters=4",
           "trainer.val_interval=2", "trainer.log_interval=1", "trainer.ckpt_interval=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc


def test_ddp_rank0_alone_creates_the_run_directory(ddp_run):
    cwd, proc = ddp_run
    assert os.listdir(cwd) == ["outputs"], os.listdir(cwd)  # rank 1 wrote nothing, not even a log file
    runs = glob.glob(os.path.join(cwd, "outputs", "*", "*"))
    assert len(runs) == 1, runs
    run = runs[0]
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["best.json", "best.pt", "best.safetensors",
                                                                   "iter_2.pt", "iter_4.pt", "last.pt"]
    assert os.path.isdir(os.path.join(run, ".hydra")) and os.path.isfile(os.path.join(run, "metrics.json"))
    # Only rank 0 reports: one line per validation, one final table.
    assert proc.stdout.count("iter 2: val mIoU") == 1 and proc.stdout.count("mAcc") == 1, proc.stdout
    ckpt = load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))
    assert len(ckpt["rng_ranks"]) == 2 and ckpt["iter"] == 4


# Run by torchrun in place of train.py: rank 1 kills itself with SIGKILL (no handler runs, as with the OOM
# killer or a lost machine) in the first attempt, at the end of iteration 3, after the checkpoint of iteration 2.
_KILL_RANK_1 = """
import os, runpy, signal, sys
from segattn.engine import trainer

real = trainer.validate_and_save

def validate_and_save(run, step, *args, **kwargs):
    out = real(run, step, *args, **kwargs)
    if run.rank == 1 and step == 3 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    return out

trainer.validate_and_save = validate_and_save
sys.argv[0] = os.path.join({repo!r}, "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _steps(run_dir, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return [(s.step, s.value) for s in acc.Scalars(tag)]


def test_a_killed_rank_restarts_the_job_in_its_run_directory_bit_exactly(ddp_run, tiny_root, tmp_path):
    """The issue's command (torchrun's static rendezvous, --max-restarts=1, no run directory given): SIGKILL
    of rank 1 after the first checkpoint; the survivor says so in one line, torchrun restarts the group,
    which resumes in the same run directory and ends with the uninterrupted run's weights and curve."""
    import socket

    wrapper = tmp_path / "kill_rank_1.py"
    wrapper.write_text(_KILL_RANK_1.format(repo=REPO))
    cwd = tmp_path / "job"
    cwd.mkdir()
    with socket.socket() as s:  # a free port for the agent's store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1",
           f"--master-port={port}", str(wrapper), *TINY, f"dataset.root={tiny_root}", "trainer.max_iters=4",
           "trainer.val_interval=2", "trainer.log_interval=1", "trainer.ckpt_interval=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # torchrun names the run, not a CI job
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = glob.glob(os.path.join(cwd, "outputs", "*", "*"))
    assert len(runs) == 1 and os.path.basename(os.path.dirname(runs[0])) == "torchrun", runs  # one run directory
    run = runs[0]
    err = proc.stderr
    lost = (f"rank 0: rank 1 was lost during iteration 4 (the newest checkpoint is of iteration 2); stopping "
            f"without saving. torchrun restarts the workers (restart 1 of 1), which continue from the newest "
            f"checkpoint in {run}")
    assert err.count(lost) == 1 and err.count("was lost") == 1, err[-3000:]
    assert "Traceback" not in err and "Connection refused" not in err, err[-3000:]  # the restart's gloo group forms
    assert f"resumed from {run}/checkpoints/last.pt at iteration 2" in err
    assert not glob.glob(os.path.join(run, "checkpoints", "*.tmp"))

    ref = glob.glob(os.path.join(ddp_run[0], "outputs", "*", "*"))[0]
    restarted, straight = (load_checkpoint(os.path.join(r, "checkpoints", "last.pt")) for r in (run, ref))
    assert restarted["iter"] == straight["iter"] == 4
    for k in straight["model"]:
        assert torch.equal(restarted["model"][k], straight["model"][k]), k
    # One curve in TensorBoard: what the killed attempt logged after iteration 2 is purged, each step once.
    assert _steps(run) == _steps(ref) and [s for s, _ in _steps(run)] == [1, 2, 3, 4]


def test_ddp_validation_equals_single_process_evaluation(ddp_run, tiny_root, tmp_path):
    cwd, _ = ddp_run
    run = glob.glob(os.path.join(cwd, "outputs", "*", "*"))[0]
    out = str(tmp_path / "eval")
    run_eval([f"checkpoint={os.path.join(run, 'checkpoints', 'last.pt')}", f"dataset.root={tiny_root}",
              "num_workers=0", "progress=false", f"hydra.run.dir={out}"])
    single = json.load(open(os.path.join(out, "eval.json")))
    sharded = json.load(open(os.path.join(run, "metrics.json")))
    for key in ("mIoU", "mAcc", "aAcc"):
        assert single[key] == pytest.approx(sharded[key], abs=1e-9), key


def test_multirun_sweep_and_summary(tiny_root, tmp_path):
    sweep = str(tmp_path / "sweep")
    run_train(["--multirun", "head=fcn,cc", "seed=0,1", *TINY, f"dataset.root={tiny_root}", "trainer.max_iters=2",
               "trainer.val_interval=2", "head.channels=32", f"hydra.sweep.dir={sweep}"])
    runs = sorted(os.listdir(sweep))
    metrics = sorted(glob.glob(os.path.join(sweep, "*", "metrics.json")))
    assert len(metrics) == 4, runs  # each run its own directory

    summarize = _summarize()
    rows = summarize.collect(sweep)
    assert len(rows) == 4 and len({r["overrides"] for r in rows}) == 4
    assert {("head=cc" in r["overrides"], "seed=1" in r["overrides"]) for r in rows} == {
        (False, False), (False, True), (True, False), (True, True)}
    table = summarize.markdown(rows)
    assert table.count("\n") == 5 and "head=cc seed=1" in table


def _summarize():
    import importlib.util

    spec = importlib.util.spec_from_file_location("summarize", os.path.join(REPO, "scripts", "summarize_sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_sweep_csv_to_stdout_or_a_file(tmp_path, capsys):
    import csv
    import io

    for run, (head, miou) in enumerate([("fcn", 0.25), ("cc", 0.5)]):
        os.makedirs(tmp_path / str(run) / ".hydra")
        (tmp_path / str(run) / ".hydra" / "overrides.yaml").write_text(f"- head={head}\n")
        (tmp_path / str(run) / "metrics.json").write_text(json.dumps({"mIoU": miou, "mAcc": 0.6, "aAcc": 0.9,
                                                                      "iter": 2}))
    summarize = _summarize()
    summarize.main([str(tmp_path), "--csv"])  # no path: the CSV on stdout, nothing else
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["overrides"], r["mIoU mean %"], r["n"]) for r in rows] == [("head=cc", "50.00", "1"),
                                                                          ("head=fcn", "25.00", "1")]
    summarize.main([str(tmp_path), "--csv", "-", "--sort", "run", "--runs"])
    assert capsys.readouterr().out.splitlines()[1].startswith("0,head=fcn")
    out = tmp_path / "t.csv"
    summarize.main([str(tmp_path), "--csv", str(out)])  # a path: the table on stdout, the CSV in the file
    assert capsys.readouterr().out.startswith("| overrides (minus seed) |")
    assert [r["overrides"] for r in csv.DictReader(open(out))] == ["head=cc", "head=fcn"]


@pytest.mark.parametrize("launcher", ["slurm", "slurm_cpu"])
def test_slurm_launcher_config_composes(launcher):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={launcher}", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.tasks_per_node >= 1


@pytest.fixture(scope="module")
def fp32_losses(tiny_root, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("fp32"))
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=4", "trainer.val_interval=4",
               "trainer.log_interval=1", f"hydra.run.dir={run}"])
    return _losses(run)


@pytest.mark.parametrize("option", ["trainer.amp=bf16", "trainer.amp=fp16", "trainer.channels_last=true",
                                    "trainer.compile=aot_eager"])
def test_precision_and_layout_options_keep_the_loss_curve(option, fp32_losses, tiny_root, tmp_path):
    run = str(tmp_path / "r")
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=4", "trainer.val_interval=4",
               "trainer.log_interval=1", option, f"hydra.run.dir={run}"])
    losses = _losses(run)
    assert len(losses) == 4 and all(map(torch.isfinite, torch.tensor(losses)))
    tol = 0.05 if "amp" in option else 1e-3  # reduced precision drifts a little; layout/compile must not
    for a, b in zip(losses, fp32_losses):
        assert abs(a - b) <= tol * abs(b), (option, losses, fp32_losses)


def test_gradient_accumulation_matches_the_bigger_batch(fp32_losses, tiny_root, tmp_path):
    """batch 1 x accum 2 sees the same samples as batch 2; only BN's batch statistics differ."""
    run = str(tmp_path / "r")
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=4", "trainer.val_interval=4",
               "trainer.log_interval=1", "trainer.batch_size=1", "trainer.grad_accum=2", f"hydra.run.dir={run}"])
    losses = _losses(run)
    assert len(losses) == 4
    ckpt = load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))
    assert ckpt["iter"] == 4 and ckpt["scheduler"]["last_epoch"] == 4  # 4 optimizer steps, not 8
    for a, b in zip(losses, fp32_losses):
        assert abs(a - b) <= 0.25 * abs(b), (losses, fp32_losses)


@pytest.mark.parametrize("sync_bn,world_size,device,expected", [
    (None, 4, "cuda", True), (True, 4, "cuda", True), (False, 4, "cuda", False),
    (None, 1, "cuda", False), (True, 1, "cuda", False), (None, 2, "cpu", False), (True, 2, "cpu", False),
])
def test_trainer_sync_bn_is_the_one_switch(sync_bn, world_size, device, expected):
    # A recipe's backbone.norm=syncbn must not override trainer.sync_bn=false on several GPUs.
    from segattn.engine.trainer import sync_bn_wanted

    assert sync_bn_wanted(sync_bn, world_size, torch.device(device)) is expected
