"""Train a segmentor: ``python train.py [head=cc] [dataset=cityscapes dataset.root=...] [key=value ...]``.

Hydra composes conf/train.yaml with the overrides; segattn.engine.train does the rest.
"""

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from segattn.engine import train


# An absolute config path, so that tests can import this module and call main() in-process.
CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def main(cfg: DictConfig) -> float:
    metrics = train(OmegaConf.to_container(cfg, resolve=True), HydraConfig.get().runtime.output_dir)
    return metrics["mIoU"]  # the value a sweeper would optimise


if __name__ == "__main__":
    main()
