"""Stopping a run without losing it: Ctrl-C (SIGINT), SIGTERM (Slurm preemption and time limit, ``timeout``)
and SIGUSR1 (the warning ``#SBATCH --signal=USR1@<seconds>`` asks Slurm for before the time limit);
under Hydra's submitit launcher also submitit's SIGUSR2, whose own handler (requeue) runs after the save.

The first signal only sets a flag; the training loop finishes the iteration it is in, every rank
agrees to stop at the same one (under DDP each rank may see the signal at a different moment),
``last.pt`` is written and :class:`Interrupted` carries where it is and how to continue. A second
Ctrl-C stops at once, the usual way. DataLoader workers ignore SIGINT (``segattn.data.seed_worker``):
a Ctrl-C reaches the whole terminal process group, and a worker that died of it would fail the
loader before the checkpoint is written; the loader shuts its workers down itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import torch

from . import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def launcher_signal() -> signal.Signals | None:
    """The signal on which a launcher's own handler checkpoints and requeues the job: submitit's (Hydra's
    submitit launcher) SIGUSR2, or the one ``SUBMITIT_PREEMPT_SIGNAL`` names."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"),
                   None)


class Interrupted(Exception):
    """Training stopped on a signal after ``step``; ``last.pt`` of ``run_dir`` holds that iteration."""

    def __init__(self, signum: int, step: int, max_iters: int, run_dir: str, then: str | None = None):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1
        # ``then``: what happens next when a launcher takes over (a requeued Slurm job), else how to continue.
        then = then or f"To continue, run the same command with: resume=auto hydra.run.dir={run_dir}"
        super().__init__(f"stopped by {signal.Signals(signum).name} after iteration {step}/{max_iters}; saved "
                         f"{run_dir}/checkpoints/last.pt. {then}")


class GracefulStop:
    """``with GracefulStop() as stop:`` installs the handlers (main thread only) and restores the old
    ones on exit; ``stop.requested()`` is the flag, agreed on by every rank."""

    def __init__(self):
        self.signum = 0
        self._old = {}
        self.launcher = None  # a launcher's handler of launcher_signal(), run once last.pt is saved

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:  # Ctrl-C again: stop now, as without this handler
            signal.signal(signum, signal.default_int_handler)
            raise KeyboardInterrupt
        if self.signum:  # SIGTERM twice is one request: Slurm signals every process and torchrun forwards it
            return
        self.signum = signum
        if signum == signal.SIGTERM:
            # torchrun, Slurm and `timeout` send it to every process of the job, DataLoader workers too: their
            # end is no error now (the loader's SIGCHLD handler would raise one before last.pt is written).
            self._old.setdefault(signal.SIGCHLD, signal.signal(signal.SIGCHLD, signal.SIG_DFL))  # back on exit
        # Under torchrun a SIGTERM may be the agent ending the survivors of a lost rank, which then say
        # so in one line (segattn.engine.elastic.RankLost); this one would only precede it.
        if "TORCHELASTIC_RUN_ID" not in os.environ:
            sys.stderr.write(f"\n{signal.Signals(signum).name}: finishing this iteration, then saving last.pt "
                             f"(press Ctrl-C again to stop at once)\n")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
            # submitit (Hydra's submitit launcher) handles its preemption signal itself: it requeues the job
            # and exits at once, mid-iteration, losing what was trained since the newest checkpoint. That
            # handler now runs after last.pt is saved (hand_over). Without one, the signal is left alone.
            s = launcher_signal()
            if s is not None and s not in SIGNALS and callable(signal.getsignal(s)):
                self.launcher = signal.getsignal(s)
                self._old[s] = signal.signal(s, self._handle)
        return self

    def hands_over(self, signum: int) -> bool:
        """Whether ``signum`` is the launcher's preemption signal, with the launcher's handler to run."""
        return self.launcher is not None and signum == launcher_signal()

    def hand_over(self, signum: int) -> None:
        """After ``last.pt`` was saved on ``signum``: when :meth:`hands_over`, run the launcher's own
        handler (submitit's checkpoints the job, requeues it and exits on rank 0)."""
        if self.hands_over(signum):
            self.launcher(signum, None)

    def __exit__(self, *exc) -> None:
        self.launcher = None
        for s, handler in self._old.items():
            if s == signal.SIGTERM and signal.getsignal(s) is signal.SIG_IGN:  # a requeued Slurm job: keep it
                continue
            signal.signal(s, handler)
        self._old.clear()

    def requested(self, device: torch.device, save_due: bool = False) -> tuple[int, bool]:
        """The signal to stop on (0: none), and whether any rank finds a timed checkpoint due
        (``save_due``: ``trainer.ckpt_interval_min``). Under DDP every rank takes the same decision,
        the largest signal number any rank received, so they all stop after the same iteration."""
        if not distributed.is_dist():
            return self.signum, save_due
        flag = torch.tensor([float(self.signum), float(save_due)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag[0].item()), bool(flag[1].item())

