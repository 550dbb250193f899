"""Surviving a lost rank and a preempted job: what the launcher says about this run, and what to do next.

Restarting launchers start the same command again: ``torchrun --max-restarts=N`` when a worker dies,
Slurm when a job is requeued. Such a restart must land in the run directory of the attempt before it
and continue from its newest complete checkpoint, so the run directory is named after the launch,
not after the time the process started (:func:`launch_key`), and ``resume`` defaults to ``auto``
there (:func:`resume_default`). Only the environment is read here; Hydra's side is segattn/cli.py.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from . import distributed


def _torchrun_agent_start() -> str | None:
    """``<start time>-<pid>`` of the torchrun agent that started this worker (its parent process), or
    None when the parent is not torchrun or /proc cannot tell. The agent lives through every restart
    it makes, and its pid with its start time names no other process on this host."""
    ppid = os.getppid()
    try:
        cmdline = open(f"/proc/{ppid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        if "torch.distributed.run" not in cmdline and "torchrun" not in cmdline:
            return None
        ticks = int(open(f"/proc/{ppid}/stat").read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    started = datetime.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    return f"{started:%Y-%m-%d_%H-%M-%S}-{ppid}"


def launch_key(environ=None) -> str | None:
    """What names this launch, the same in every restart of it, or None outside a restarting launcher:

    - a Slurm job: ``slurm/<SLURM_JOB_ID>`` (an array task: ``slurm/<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>``,
      Slurm's own ``%A_%a``); a requeued job keeps its id. Slurm comes first: under ``srun torchrun`` the
      job outlives torchrun;
    - torchrun: ``torchrun/<TORCHELASTIC_RUN_ID>`` (``--rdzv-id``; ``--standalone`` makes a random one),
      or, when the id is torchrun's default ``none``, ``torchrun/<start time>-<pid>`` of the torchrun
      process that started this worker.
    """
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID"):
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        else:
            job = env["SLURM_JOB_ID"]
        return f"slurm/{_safe(job)}"
    run_id = env.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun/{_safe(run_id)}"
    if run_id == "none":
        agent = _torchrun_agent_start() if environ is None else None
        return f"torchrun/{agent}" if agent else None
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "-", name)


def restarted(environ=None) -> bool:
    """Whether the launcher started this process again: a torchrun restart (``TORCHELASTIC_RESTART_COUNT``)
    or a requeued Slurm job (``SLURM_RESTART_COUNT``)."""
    env = os.environ if environ is None else environ
    return any(int(env.get(k) or 0) > 0 for k in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"))


def resume_default(resume, run_dir_from_launch: bool, environ=None):
    """``resume`` as given, except that null becomes ``auto`` when a restart may find checkpoints here:
    the run directory is the launch's own (:func:`launch_key`) or the launcher restarted this process."""
    if resume in (None, "") and (run_dir_from_launch or restarted(environ)):
        return "auto"
    return resume


def after_a_lost_rank(run_dir: str, environ=None) -> str:
    """What happens once the survivors have stopped: torchrun's restart, or the end of the job."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RESTART_COUNT" in env:
        done, allowed = int(env["TORCHELASTIC_RESTART_COUNT"]), int(env.get("TORCHELASTIC_MAX_RESTARTS") or 0)
        if done < allowed:
            return (f"torchrun restarts the workers (restart {done + 1} of {allowed}), which continue from the "
                    f"newest checkpoint in {run_dir}")
        return (f"torchrun has no restart left (--max-restarts={allowed}), so the job ends; to continue, run the "
                f"same command with resume=auto hydra.run.dir={run_dir}")
    return f"the job ends; to continue, run the same command with resume=auto hydra.run.dir={run_dir}"


class RankLost(Exception):
    """A peer rank died: this rank stopped without saving (a checkpoint needs every rank's state)."""

    exit_code = 1

    def __init__(self, rank: int, lost: list[int] | None, step: int, run_dir: str, saved: int | None):
        who = (f"rank {', '.join(map(str, lost))}" if lost else "a peer rank") + (" was" if not lost or
                                                                                   len(lost) == 1 else " were")
        kept = f"the newest checkpoint is of iteration {saved}" if saved else "no checkpoint was written yet"
        super().__init__(f"rank {rank}: {who} lost during iteration {step + 1} ({kept}); stopping without saving. "
                         f"{after_a_lost_rank(run_dir)}")


# Taken by whoever says that a rank was lost (the training thread or the SIGTERM watcher), so it is said once.
REPORTING = threading.Lock()


class SigtermWatch:
    """``with SigtermWatch(callback):`` in a torchrun worker, run ``callback`` in a thread of its own when
    SIGTERM arrives, even while the main thread is blocked in C++ (a collective, a backward pass) where
    Python's signal handlers cannot run. The Python handler (``GracefulStop``) must be installed first:
    the wakeup fd is how CPython tells a thread that a signal came. Outside torchrun it does nothing."""

    def __init__(self, callback):
        self.callback, self._old_fd, self._pipe = callback, None, None

    def __enter__(self) -> "SigtermWatch":
        if "TORCHELASTIC_RUN_ID" not in os.environ or threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(r,), daemon=True, name="segattn-sigterm-watch").start()
        return self

    def _watch(self, r: int) -> None:
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                self.callback()

    def __exit__(self, *exc) -> None:
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_fd)
            os.close(self._pipe[1])  # the thread reads end-of-file and ends
            self._pipe = None


def rank_lost(run, error: Exception) -> None:
    """A collective failed: when another rank died (killed, out of memory, its machine gone), stop this
    one at once, without a checkpoint (saving needs every rank's state, and the newest complete one is
    on disk), by raising :class:`~segattn.engine.RankLost`: one line naming the lost rank and
    what happens next. When every rank answers, ``error`` was something else and is raised again."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # DataLoader workers ending now are no news
    if not REPORTING.acquire(blocking=False):
        time.sleep(60)  # the SIGTERM watcher (on_sigterm) is saying it and ends this process
    lost = distributed.lost_ranks()
    if lost == []:
        REPORTING.release()
        raise error
    if run.writer is not None:
        run.writer.close()
    distributed.abandon()
    raise RankLost(run.rank, lost, run.step, run.run_dir, run.saved) from None


def on_sigterm(run) -> None:
    """Under torchrun, a SIGTERM is the agent ending the survivors of a lost rank, or a stop of the whole
    job (which the loop turns into last.pt). The training thread may sit in a collective for a while yet
    (gloo notices a closed peer after seconds; NCCL may wait for dist_timeout_s), so this runs beside
    it (:class:`SigtermWatch`): if a rank does not answer, say so in one line and leave at once."""
    lost = distributed.lost_ranks()
    if not lost or not REPORTING.acquire(blocking=False):
        return  # every rank answered (a stop of the job), the store is gone, or the loop is saying it
    if run.writer is not None:
        run.writer.flush()  # what it logged up to the newest checkpoint; a restart purges the rest
    print(RankLost(run.rank, lost, run.step, run.run_dir, run.saved), file=sys.stderr, flush=True)
    os._exit(RankLost.exit_code)


# --- Slurm ------------------------------------------------------------------------------------------

def slurm_job() -> str | None:
    """The id ``scontrol requeue`` takes for this job (an array task's own SLURM_JOB_ID), or None."""
    return os.environ.get("SLURM_JOB_ID") or None


def _job_fields(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise OSError(out.stderr.strip() or f"exit status {out.returncode}")
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def slurm_requeue(signum: int) -> str | None:
    """After ``last.pt`` was saved on ``signum`` in a Slurm job: requeue the job when Slurm allows it and
    the signal asked for it; returns the sentence saying what happened (None outside Slurm).

    SIGUSR1 is the warning a job asks for with ``#SBATCH --signal=USR1@<seconds>`` before its time
    limit: the job is requeued. SIGTERM comes at the time limit and on preemption, but also from
    ``scancel``: the job is requeued unless its state says Slurm cancelled it (``scancel``: the user meant
    it) or is requeueing it already. Only a job with ``Requeue=1`` (``#SBATCH
    --requeue``, or the cluster's default) can be requeued; the requeued job has the same id, so it
    runs in the same run directory and resumes from ``last.pt``.
    """
    job = slurm_job()
    if job is None or signum not in (signal.SIGUSR1, signal.SIGTERM):
        return None
    if shutil.which("scontrol") is None:
        return f"Slurm job {job} is not requeued: scontrol is not on PATH"
    try:
        fields = _job_fields(job)
    except (OSError, subprocess.SubprocessError) as e:
        return f"Slurm job {job} is not requeued: scontrol show job {job} failed ({e})"
    state = fields.get("JobState", "")
    if fields.get("Requeue") != "1":
        return f"Slurm job {job} is not requeued: it is not requeueable (Requeue=0; submit it with #SBATCH --requeue)"
    if signum == signal.SIGTERM and state.startswith(("CANCELLED", "REQUEUE", "PENDING")):
        why = "cancelled" if state.startswith("CANCELLED") else "being requeued by Slurm"
        return f"Slurm job {job} is {why} (JobState={state}); not requeued here"
    # Requeueing a running job ends it: Slurm sends SIGTERM to its processes. This one is leaving anyway
    # (last.pt is saved): it ignores that, and its DataLoader workers' end is no error any more.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return f"Slurm job {job} could not be requeued: scontrol requeue {job}: {out.stderr.strip()}"
    return f"Slurm job {job} requeued (scontrol requeue {job}); it resumes from last.pt in this run directory"
