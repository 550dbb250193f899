"""Train a segmentor: ``python train.py [head=cc] [dataset=cityscapes dataset.root=...] [key=value ...]``.

Hydra composes conf/train.yaml with the overrides, checked against the schema in segattn/config.py;
segattn.engine.train does the rest. Under ``torchrun --nproc_per_node=N train.py ...`` every process
runs this file; only rank 0 gets a run directory (see ``_quiet_nonzero_rank``).
"""

import contextlib
import os
import re
import sys

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from segattn.cli import check_run_dir, remove_if_refused, user_errors
from segattn.config import ConfigNode, TrainConfig
from segattn.engine import train
from segattn.engine.distributed import env_rank
from segattn.engine.logging import console_log

# An absolute config path, so that tests can import this module and call main() in-process.
CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")

# conf/train.yaml's defaults list starts with ``optional schema@_here_: train``: with this registered,
# Hydra checks every key and value type while it composes.
ConfigStore.instance().store(group="schema", name="train", node=TrainConfig)


# Said already, or not changing what is learnt.
_NOT_IN_NAME = ("head", "backbone", "seed", "backbone.block_attention", "model.scale_attention.scales",
                "trainer.progress", "trainer.num_workers", "trainer.log_interval", "trainer.device")


def run_name(head, backbone, block_attention, scales, seed, overrides: str) -> str:
    """The run folder's name after its time (``hydra.run.dir``): what tells two runs apart, the head,
    backbone, block and scale attention, seed, then the other overrides as ``key-value`` (the group
    choices and paths left out; at most 120 characters), so two runs never look identical."""
    parts = [str(head), str(backbone)]
    if block_attention:
        parts.append(f"{block_attention}-blocks")
    if scales:
        parts.append("scales" + "-".join(f"{s:g}" for s in scales))
    parts.append(f"seed{seed}")
    rest = [o for o in str(overrides or "").split(",")
            if o and not o.split("=")[0].lstrip("+~") in _NOT_IN_NAME]
    # Only characters a path passed back as an override (eval.py checkpoint=...) may hold unquoted.
    name = "_".join(parts + [o.replace("=", "-") for o in rest])
    return re.sub(r"[^A-Za-z0-9._+-]", "-", name)[:120]


OmegaConf.register_new_resolver("run_name", run_name, replace=True)


def check_overrides(argv: list[str], schema: type[ConfigNode]) -> None:
    """Stop on an override of a key the schema does not have (``trainer.max_iter=5``), listing the valid
    keys, before Hydra composes (it would refuse the key too, without saying which ones exist).
    Additions (``+key=...``), deletions and ``hydra.*`` / ``group/option`` overrides are Hydra's."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = get_args_parser().parse_known_args(argv)[0].overrides
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if o.is_add() or o.is_force_add() or o.is_delete() or o.package is not None or "/" in key \
                or key.split(".")[0] in ("hydra", "schema"):
            continue
        try:
            schema.check_key(key)
        except ValueError as e:
            raise SystemExit(f"Could not override '{o.input_line}': {e}") from None


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def _main(cfg: DictConfig) -> float:
    run_dir = HydraConfig.get().runtime.output_dir
    main_process = env_rank() == 0  # ranks > 0 have no run directory of their own
    # The console is kept in <run>/train.log. A mistake: one paragraph, exit 1, no run directory left
    # behind; SIGINT/SIGTERM: saved, 130/143.
    with remove_if_refused(run_dir) if main_process else contextlib.nullcontext(), \
            console_log(os.path.join(run_dir, "train.log") if main_process else None), user_errors("train.py"):
        metrics = train(OmegaConf.to_container(cfg, resolve=True), run_dir)
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
