"""Export a checkpoint: ``python export.py checkpoint=PATH format=onnx|torchscript|exported_program``.

Hydra composes conf/export.yaml with the overrides, checked against the schema in segattn/config.py;
segattn.deploy.export_checkpoint rebuilds the model from the config stored in the checkpoint and
writes it with a JSON of its classes, palette, normalisation and input size.
"""

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from segattn.cli import check_overrides, register_configs, user_errors
from segattn.config import ExportConfig
from segattn.deploy import export_checkpoint

# An absolute config path, so that tests can import this module and call main() in-process.
CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")

register_configs()  # the schema conf/export.yaml is checked against


@hydra.main(version_base="1.3", config_path=CONF, config_name="export")
def _main(cfg: DictConfig):
    with user_errors("export.py"):  # a mistake: one paragraph, exit 1 (HYDRA_FULL_ERROR=1: the traceback)
        missing = [k for k in ("checkpoint", "format") if OmegaConf.is_missing(cfg, k)]
        if missing:
            raise ValueError(f"{' and '.join(k + '=...' for k in missing)} required: python export.py "
                             f"checkpoint=PATH format=onnx|torchscript|exported_program")
        cfg = ExportConfig.from_dict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
        info = export_checkpoint(cfg.checkpoint, cfg.format, cfg.output, cfg.input_size, cfg.dynamic, cfg.device,
                                 verbose=cfg.verbose, plugins=cfg.plugins)
    if info["dynamic"]:
        size = "dynamic sizes: batch, height and width %d-%d px" % tuple(info["dynamic_range"])
    else:
        size = "fixed input %dx%d" % tuple(info["input_size"])
        if info.get("fixed_because"):  # the default, dynamic=null, where the head cannot
            size += f", not dynamic: {info['fixed_because']}"
    print(f"wrote {info['path']} ({cfg.format}, {size}) and {info['json']}")
    return info


def main():
    check_overrides(sys.argv[1:], ExportConfig)
    return _main()


if __name__ == "__main__":
    main()
