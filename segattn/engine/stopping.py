"""Stopping a run without losing it: Ctrl-C (SIGINT) and SIGTERM (Slurm preemption, ``timeout``).

The first signal only sets a flag; the training loop finishes the iteration it is in, every rank
agrees to stop at the same one (under DDP each rank may see the signal at a different moment),
``last.pt`` is written and :class:`Interrupted` carries where it is and how to continue. A second
Ctrl-C stops at once, the usual way. DataLoader workers ignore SIGINT (``segattn.data.seed_worker``):
a Ctrl-C reaches the whole terminal process group, and a worker that died of it would fail the
loader before the checkpoint is written; the loader shuts its workers down itself.
"""

from __future__ import annotations

import signal
import sys
import threading

import torch

from . import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal after ``step``; ``last.pt`` of ``run_dir`` holds that iteration."""

    def __init__(self, signum: int, step: int, max_iters: int, run_dir: str):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after iteration {step}/{max_iters}; saved "
            f"{run_dir}/checkpoints/last.pt. To continue, run the same command with: "
            f"resume=auto hydra.run.dir={run_dir}")


class GracefulStop:
    """``with GracefulStop() as stop:`` installs the handlers (main thread only) and restores the old
    ones on exit; ``stop.requested()`` is the flag, agreed on by every rank."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum:  # the second signal: stop now, as without this handler
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name}: finishing this iteration, then saving last.pt "
                         f"(press Ctrl-C again to stop at once)\n")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()

    def requested(self, device: torch.device) -> int:
        """The signal to stop on (0: none). Under DDP every rank takes the same decision, the
        largest signal number any rank received, so they all stop after the same iteration."""
        if not distributed.is_dist():
            return self.signum
        flag = torch.tensor([float(self.signum)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

