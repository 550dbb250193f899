"""Train a segmentor: ``python train.py [head=cc] [dataset=cityscapes dataset.root=...] [key=value ...]``.

Hydra composes conf/train.yaml with the overrides, checked against the schema in segattn/config.py;
segattn.engine.train does the rest. Under ``torchrun --nproc_per_node=N train.py ...`` every process
runs this file; only rank 0 gets a run directory (see ``_quiet_nonzero_rank``).
"""

import contextlib
import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from segattn.cli import check_overrides, check_run_dir, register_configs, remove_if_refused, user_errors
from segattn.config import TrainConfig
from segattn.engine import train
from segattn.engine.distributed import env_rank
from segattn.engine.elastic import launch_key, resume_default
from segattn.engine.logging import console_log

# An absolute config path, so that tests can import this module and call main() in-process.
CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")

register_configs()  # the schemas conf/*.yaml are checked against, and the run_name resolver


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def _main(cfg: DictConfig) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    main_process = env_rank() == 0  # ranks > 0 have no run directory of their own
    # The console is kept in <run>/train.log. A mistake: one paragraph, exit 1, no run directory left
    # behind; SIGINT/SIGTERM: saved, 130/143.
    config = OmegaConf.to_container(cfg, resolve=True)
    # Under a launcher that restarts (torchrun --max-restarts, a requeued Slurm job) resume=null means auto:
    # when the run directory is the launch's own (not given as hydra.run.dir) or this is a restart.
    hydra_cfg = HydraConfig.get()
    own_dir = (hydra_cfg.mode != RunMode.MULTIRUN and launch_key() is not None
               and not any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra))
    config["resume"] = resume_default(config["resume"], own_dir)
    with remove_if_refused(run_dir) if main_process else contextlib.nullcontext(), \
            console_log(os.path.join(run_dir, "train.log") if main_process else None), user_errors("train.py"):
        metrics = train(config, run_dir)
    return metrics["mIoU"]  # the value a sweeper would optimise


def main() -> float:
    check_overrides(sys.argv[1:], TrainConfig)
    check_run_dir(sys.argv[1:], default="outputs")  # before Hydra opens its log file in it
    return _main()


def _quiet_nonzero_rank(argv: list[str]) -> list[str]:
    """Overrides that stop Hydra from creating anything on ranks > 0.

    Each torchrun process resolves ``hydra.run.dir`` by itself (its timestamp may differ from rank
    0's), and Hydra would create that folder, ``.hydra/`` and a log file in it. Ranks > 0 run in the
    current directory instead, with Hydra's output and file logging off; the trainer takes rank 0's
    run directory over torch.distributed.
    """
    if env_rank() == 0 or "--multirun" in argv or "-m" in argv:
        return argv
    return [*argv, "hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled"]


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_quiet_nonzero_rank(sys.argv[1:])]
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A finished torchrun worker leaves without the interpreter's teardown: after a run with DataLoader
        # workers, PyTorch's C++ teardown at exit aborts ("terminate called without an active exception",
        # SIGABRT), and torchrun would call the finished job failed. Everything is written and closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)
