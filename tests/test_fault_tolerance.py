"""Fault tolerance: a restart or a requeue continues the run in its own directory (issue 32).

The 2-rank torchrun job whose rank 1 is killed is in tests/test_scale_out.py (it shares that module's
uninterrupted DDP run). Here: Slurm's preemption signal and requeue, simulated on the CPU with Slurm's
environment variables and a fake ``scontrol`` on PATH (a process, since the signal is the point); the
TensorBoard curve after a restart; the time-based checkpoint interval; what names a launch.
"""

import glob
import os
import signal
import subprocess
import sys

import pytest

import segattn.engine.trainer as trainer_mod
from segattn.engine import elastic
from segattn.engine.checkpoint import load_checkpoint

from conftest import REPO, TINY, run_train

# scontrol as Slurm has it, for `show job -o <id>` and `requeue <id>`; every call is appended to $SCONTROL_LOG.
_SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
if [ "$1" = show ]; then
  echo "JobId=$4 JobName=train JobState=${FAKE_JOB_STATE:-RUNNING} Reason=None Requeue=${FAKE_REQUEUE:-1} Restarts=0"
fi
"""


def _steps(run_dir, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return [s.step for s in acc.Scalars(tag)]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Slurm's variables for job 4242 and a fake scontrol first on PATH; returns the scontrol call log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    log = tmp_path / "scontrol.log"
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:  # a CI inside a Slurm job
        monkeypatch.delenv(key)
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SCONTROL_LOG": str(log),
                       "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}.items():
        monkeypatch.setenv(key, value)
    return log


def test_slurm_usr1_saves_requeues_and_the_requeued_job_resumes_in_its_run_directory(tiny_root, tmp_path,
                                                                                      fake_slurm):
    cmd = [sys.executable, os.path.join(REPO, "train.py"), *TINY, f"dataset.root={tiny_root}",
           "trainer.max_iters=12", "trainer.val_interval=100", "trainer.log_interval=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # set-up done: the loop is about to start
        if line.startswith("run directory:"):
            break
    proc.send_signal(signal.SIGUSR1)  # #SBATCH --signal=USR1@<seconds>: the time limit is near
    _, err = proc.communicate(timeout=300)
    runs = glob.glob(str(tmp_path / "outputs" / "slurm" / "4242_*"))
    assert len(runs) == 1, (runs, err[-2000:])  # named after the job, not the time
    run = runs[0]
    assert proc.returncode == 128 + signal.SIGUSR1, err[-2000:]
    stopped = load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))["iter"]
    assert 1 <= stopped < 12
    assert (f"stopped by SIGUSR1 after iteration {stopped}/12; saved {run}/checkpoints/last.pt. Slurm job 4242 "
            f"requeued (scontrol requeue 4242); it resumes from last.pt in this run directory") in err
    assert "Traceback" not in err
    assert fake_slurm.read_text().splitlines() == ["show job -o 4242", "requeue 4242"]

    # Slurm starts the requeued job: the same command, the same job id, SLURM_RESTART_COUNT=1.
    out = subprocess.run(cmd, cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert glob.glob(str(tmp_path / "outputs" / "*" / "*")) == [run]
    assert f"resumed from {run}/checkpoints/last.pt at iteration {stopped}" in out.stderr
    assert load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))["iter"] == 12
    assert _steps(run) == list(range(1, 13))  # one TensorBoard curve over both jobs


@pytest.mark.parametrize("signum,state,requeueable,expected", [
    (signal.SIGTERM, "RUNNING", "1", "Slurm job 4242 requeued (scontrol requeue 4242)"),  # time limit, preemption
    (signal.SIGTERM, "CANCELLED", "1", "Slurm job 4242 is cancelled (JobState=CANCELLED); not requeued here"),
    (signal.SIGUSR1, "RUNNING", "0", "Slurm job 4242 is not requeued: it is not requeueable (Requeue=0; "
                                     "submit it with #SBATCH --requeue)"),
    (signal.SIGINT, "RUNNING", "1", None),  # Ctrl-C in an interactive job: the user stops it
])
def test_slurm_requeue_only_what_slurm_allows_and_the_user_did_not_cancel(signum, state, requeueable, expected,
                                                                          fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_JOB_STATE", state)
    monkeypatch.setenv("FAKE_REQUEUE", requeueable)
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGCHLD)}  # what a requeue changes
    try:
        said = elastic.slurm_requeue(signum)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    assert said == expected or (expected and said.startswith(expected)), said
    calls = fake_slurm.read_text().splitlines() if fake_slurm.exists() else []
    assert ("requeue 4242" in calls) == (expected is not None and "requeued (" in expected), calls


def test_tensorboard_shows_one_curve_after_a_restart(tiny_root, tmp_path):
    """A run killed after iteration 3 whose newest checkpoint is of iteration 2: the restart logs 3 and 4
    again, and TensorBoard shows every step once (purge_step), not 3 twice."""
    run = str(tmp_path / "run")
    argv = [*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=4", "trainer.val_interval=100",
            "trainer.log_interval=1", "trainer.ckpt_interval=2", f"hydra.run.dir={run}"]
    run_train([*argv, "trainer.stop_at=3"])
    ckpts = os.path.join(run, "checkpoints")
    os.replace(os.path.join(ckpts, "iter_2.pt"), os.path.join(ckpts, "last.pt"))  # as if killed before saving 3
    assert _steps(run) == [1, 2, 3]
    run_train([*argv, "resume=auto"])
    assert _steps(run) == [1, 2, 3, 4]


def test_ckpt_interval_min_writes_last_pt_whenever_the_time_has_passed(tiny_root, tmp_path, monkeypatch):
    saved, real = [], trainer_mod.save
    monkeypatch.setattr(trainer_mod, "save", lambda run, name, step, **kw: (saved.append((name, step)),
                                                                          real(run, name, step, **kw)))
    # Without it this run writes last.pt only at its end (iteration 3: no validation before, no ckpt_interval).
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=3", "trainer.val_interval=100",
               "trainer.ckpt_interval_min=1e-6", f"hydra.run.dir={tmp_path}"])  # due after every iteration
    assert [s for s in saved if s[0] == "last.pt"] == [("last.pt", 1), ("last.pt", 2), ("last.pt", 3)]


def test_submitit_preemption_signal_saves_last_pt_before_its_handler_requeues(tiny_root, tmp_path, monkeypatch):
    """Hydra's submitit launcher: submitit's own SIGUSR2 handler requeues the job and exits at once. Under
    our trainer it runs after the iteration ends and last.pt is written, so the requeued job loses nothing."""
    calls, real_step = [], trainer_mod.train_step

    def submitit_handler(signum, frame):  # what submitit's checkpoint_and_try_requeue does on rank 0
        calls.append(load_checkpoint(str(tmp_path / "checkpoints" / "last.pt"))["iter"])
        raise SystemExit(-1)

    def step_then_signal(*args, **kwargs):
        out = real_step(*args, **kwargs)
        if trainer_mod.signal.getsignal(signal.SIGUSR2) is not submitit_handler:  # ours, chained to submitit's
            os.kill(os.getpid(), signal.SIGUSR2)  # during iteration 2
        return out

    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    monkeypatch.setattr(trainer_mod, "train_step", step_then_signal)
    old = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(SystemExit):
            run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=6", "trainer.val_interval=100",
                       f"hydra.run.dir={tmp_path}"])
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # given back
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert calls == [1]  # the signal came in the first iteration; last.pt of it existed when submitit took over


def test_what_names_a_launch_and_when_resume_is_auto():
    assert elastic.launch_key({}) is None
    assert elastic.launch_key({"SLURM_JOB_ID": "77"}) == "slurm/77"
    array = {"SLURM_JOB_ID": "80", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}
    assert elastic.launch_key(array) == "slurm/77_3"  # Slurm's %A_%a
    assert elastic.launch_key({"SLURM_JOB_ID": "77", "TORCHELASTIC_RUN_ID": "abc"}) == "slurm/77"  # srun torchrun
    assert elastic.launch_key({"TORCHELASTIC_RUN_ID": "abc/1"}) == "torchrun/abc-1"
    # resume=null is auto where a restart may find checkpoints; a given value is kept.
    assert elastic.resume_default(None, True, {}) == "auto"
    assert elastic.resume_default(None, False, {}) is None
    assert elastic.resume_default(None, False, {"TORCHELASTIC_RESTART_COUNT": "1"}) == "auto"
    assert elastic.resume_default(None, False, {"SLURM_RESTART_COUNT": "2"}) == "auto"
    assert elastic.resume_default("/a/last.pt", True, {"SLURM_RESTART_COUNT": "2"}) == "/a/last.pt"
