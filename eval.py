"""Evaluate a checkpoint: ``python eval.py checkpoint=PATH [dataset.root=...] [inference.mode=slide ...]``.

Hydra composes conf/eval.yaml with the overrides; the model, the dataset and the inference mode come
from the config saved in the checkpoint (segattn.engine.evaluate_checkpoint does the rest).
"""

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from segattn.engine import evaluate_checkpoint

# An absolute config path, so that tests can import this module and call main() in-process.
CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="eval")
def main(cfg: DictConfig):
    cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # checkpoint=PATH is required
    result = evaluate_checkpoint(cfg, HydraConfig.get().runtime.output_dir)
    return result.get("mIoU")  # None when the images have no masks (prediction only)


if __name__ == "__main__":
    main()
