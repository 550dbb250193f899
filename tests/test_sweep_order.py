"""A run's numbers do not depend on what the process trained before it: a sweep (Hydra's ``--multirun`` and
the benchmarks' loops train one run after another in one process) gives each run what a fresh process gives.

What once looked like an order effect (the context suite's committed FCN which_marker seed 1 cell, mIoU
70.39 against 70.89 rerun) was a change of code: before commit 041931a the start-up checks built the model's
weights once more after seeding (a build on the meta device failed and fell back), which shifted every later
random draw; that code reproduces 70.39 exactly in a fresh process. The memory check still builds the model after
seeding and keeps its estimate per configuration without the seed, so such a draw would now depend on
whether the process estimated the configuration before: the check leaves the random state as it found it."""

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
    # The loop: another seed of the same configuration first (its memory estimate is then reused), then nl.
    train(compose_config([*common, "head=nl", "seed=1"]), str(tmp_path / "nl_seed1"))
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


def test_the_memory_check_leaves_the_random_state_as_it_was(monkeypatch):
    """Even where the model must be built with real weights first (a constructor that computes with tensor
    values cannot run on meta), estimating draws nothing from the generator the run was seeded with."""
    import segattn.models
    from segattn.engine import memory

    build = segattn.models.build_model_from_config

    def not_on_meta(cfg, num_classes, pretrained=False):
        if torch.empty(0).is_meta:
            raise RuntimeError("cannot build on meta")
        return build(cfg, num_classes, pretrained=pretrained)

    monkeypatch.setattr(segattn.models, "build_model_from_config", not_on_meta)
    cfg = compose_config(["backbone.width=8", "head.channels=16", "model.aux_head.channels=8"])
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    memory.estimate_training_step(cfg, 19, batch_size=1, crop_size=[32, 32], model=memory._build_on_meta(cfg, 19))
    assert torch.equal(torch.rand(3), expected)
