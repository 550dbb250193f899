"""Evaluate a checkpoint: ``python eval.py checkpoint=PATH [dataset.root=...] [inference.mode=slide ...]``.

Hydra composes conf/eval.yaml with the overrides, checked against the schema in segattn/config.py; the
model, the dataset and the inference mode come from the config saved in the checkpoint
(segattn.engine.evaluate_checkpoint does the rest).
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from segattn.cli import check_overrides, check_run_dir, register_configs, remove_if_refused, user_errors
from segattn.config import EvalConfig
from segattn.engine import evaluate_checkpoint
from segattn.engine.logging import console_log

# An absolute config path, so that tests can import this module and call main() in-process.
CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")

register_configs()  # the schema conf/eval.yaml is checked against


@hydra.main(version_base="1.3", config_path=CONF, config_name="eval")
def _main(cfg: DictConfig):
    run_dir = HydraConfig.get().runtime.output_dir
    # The console is kept in <run>/eval.log; a refusal leaves no run directory behind.
    with remove_if_refused(run_dir), console_log(os.path.join(run_dir, "eval.log")), user_errors("eval.py"):
        if OmegaConf.is_missing(cfg, "checkpoint"):
            raise ValueError("checkpoint=PATH is required: the segattn checkpoint to evaluate, e.g. "
                             "python eval.py checkpoint=outputs/<date>/<run>/checkpoints/best.pt")
        cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        result = evaluate_checkpoint(cfg, run_dir)
    return result.get("mIoU")  # None when the images have no masks (prediction only)


def main():
    check_overrides(sys.argv[1:], EvalConfig)
    check_run_dir(sys.argv[1:], default=os.path.join("outputs", "eval"))  # before Hydra opens its log file
    return _main()


if __name__ == "__main__":
    main()
