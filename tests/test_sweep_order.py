"""A run's numbers do not depend on what the process trained before it: a sweep (Hydra's ``--multirun`` and
the benchmarks' loops train one run after another in one process) gives each run what a fresh process gives."""

import json
import os
import subprocess
import sys

import torch

from benchmarks.common import compose_config
from conftest import REPO, TINY
from segattn.engine import train

# A fresh process trains the same config as the loop below, with this process's thread count (the order of a
# reduction, and with it the last bits, depends on it).
_ALONE = r"""
import sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from benchmarks.common import compose_config
from segattn.engine import train
train(compose_config(sys.argv[3:]), sys.argv[2])
"""


def _weights(run_dir: str) -> dict:
    return torch.load(os.path.join(run_dir, "checkpoints", "last.pt"), map_location="cpu", weights_only=True)["model"]


def test_a_run_after_another_in_one_process_equals_the_run_alone(tiny_root, tmp_path):
    common = [*TINY, "backbone.width=8", "head.channels=16", "model.aux_head.channels=8", f"dataset.root={tiny_root}",
              "trainer.max_iters=2", "trainer.val_interval=2", "trainer.device=cpu"]
    # The loop: another head (other modules, other RNG draws, other kernels) first, then nl.
    train(compose_config([*common, "head=da", "seed=1"]), str(tmp_path / "da"))
    swept = train(compose_config([*common, "head=nl"]), str(tmp_path / "nl_swept"))
    alone = str(tmp_path / "nl_alone")
    out = subprocess.run([sys.executable, "-c", _ALONE, str(torch.get_num_threads()), alone, *common, "head=nl"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = _weights(str(tmp_path / "nl_swept")), _weights(alone)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"
    with open(os.path.join(alone, "metrics.json")) as f:
        assert swept["mIoU"] == json.load(f)["mIoU"]
