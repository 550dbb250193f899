"""Every published recipe builds its model and runs one training step at its own training crop.

A recipe that cannot run its own crop (PSANet's, before the psamask op left out-of-reach pairs at
zero) is a failing test. The full-size models run on PyTorch's meta device: shapes and every op's
checks, no arithmetic, so all the recipes take seconds.
"""

import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from segattn.models.attention import ATTENTIONS
from segattn.models import build_model

from conftest import REPO

CONF = os.path.join(REPO, "conf")
EXPERIMENTS = sorted(f[:-5] for f in os.listdir(os.path.join(CONF, "experiment")) if f.endswith(".yaml"))
NUM_CLASSES = {"cityscapes": 19, "ade20k": 150}


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)


def test_every_head_has_its_three_recipes():
    # The three base recipes, then fcn and every registered head on each of them (scripts/make_recipes.py).
    assert len(EXPERIMENTS) == 3 + 3 * (1 + len(ATTENTIONS))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_recipe_trains_at_its_own_crop(experiment):
    cfg = _compose([f"+experiment={experiment}"])
    num_classes = NUM_CLASSES[cfg["dataset"]["name"]]
    # One process: the trainer turns the recipe's SyncBN into BN (trainer.sync_bn).
    backbone = dict(cfg["backbone"], norm="bn", pretrained=None)
    m = cfg["model"]
    with torch.device("meta"):
        model = build_model(backbone, cfg["head"], num_classes, m["aux_head"], m["scale_attention"]).train()
        images = torch.empty(cfg["trainer"]["batch_size"], 3, *cfg["dataset"]["crop_size"])
        outputs = model(images)
    h, w = (s // backbone["output_stride"] for s in cfg["dataset"]["crop_size"])
    assert outputs["out"].shape == (images.shape[0], num_classes, h, w)
    if cfg["head"]["name"] == "ocr":  # mmseg's ocrnet: the region FCN on c4 (0.4) instead of the auxiliary head
        assert "aux" not in outputs and outputs["regions"].shape == outputs["out"].shape
        assert model.loss_weights() == {"out": 1.0, "regions": 0.4}
    else:
        assert "aux" in outputs
    loss = sum(v.float().sum() for v in outputs.values())  # the label-free part of a step (meta has no data)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in model.head.parameters() if p.requires_grad)
