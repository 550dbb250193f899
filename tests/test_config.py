"""Every option of every config group composes, and the composed config builds what it names."""

import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import REPO

CONF = os.path.join(REPO, "conf")
GROUPS = sorted(d for d in os.listdir(CONF) if os.path.isdir(os.path.join(CONF, d)) and d not in ("hydra", "experiment"))
OPTIONS = [(g, f[:-5]) for g in GROUPS for f in sorted(os.listdir(os.path.join(CONF, g))) if f.endswith(".yaml")]
EXPERIMENTS = sorted(f[:-5] for f in os.listdir(os.path.join(CONF, "experiment")) if f.endswith(".yaml"))


def _compose(overrides, name="train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_groups_are_the_design_groups():
    assert {"backbone", "head", "dataset", "optimizer", "scheduler"} <= set(GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_option_composes(group, option):
    cfg = _compose([f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)
    if "name" in container[group]:
        assert container[group]["name"] == option
    for key in ("max_iters", "batch_size", "num_workers", "val_interval", "ckpt_interval", "log_interval", "device", "amp"):
        assert key in container["trainer"]
    crop = container["dataset"]["crop_size"]
    # a folder's default is auto: the trainer fits it to the images (tests/test_own_data.py)
    assert (isinstance(crop, list) and len(crop) == 2) or (option == "folder" and crop == "auto")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = _compose([f"+experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True)


def test_published_recipe_values():
    cfg = _compose(["+experiment=cityscapes_r50_d8_80k"])
    assert cfg.backbone.depth == 50 and cfg.backbone.deep_stem and cfg.backbone.output_stride == 8
    assert cfg.backbone.norm == "syncbn" and cfg.head.channels == 512 and cfg.head.dropout == 0.1
    assert cfg.trainer.max_iters == 80000 and list(cfg.dataset.crop_size) == [512, 1024]
    assert cfg.optimizer.lr == 0.01 and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 0.0005
    assert cfg.scheduler.name == "poly" and cfg.scheduler.power == 0.9 and cfg.scheduler.min_lr == 1e-4
    assert cfg.model.aux_head.weight == 0.4


def test_head_hyper_parameter_override():
    cfg = _compose(["head=ema", "head.num_bases=32"])
    assert cfg.head.name == "ema" and cfg.head.num_bases == 32


def test_every_head_has_its_published_recipes():
    from segattn.models.heads import head_names

    for head in head_names():
        for suffix in ("r50_d8_cityscapes_80k", "r101_d8_cityscapes_80k", "r50_d8_ade20k_160k"):
            assert f"{head}_{suffix}" in EXPERIMENTS, f"conf/experiment/{head}_{suffix}.yaml is missing (scripts/make_recipes.py)"
    cfg = _compose(["+experiment=cc_r101_d8_cityscapes_80k"])
    assert cfg.head.name == "cc" and cfg.head.recurrence == 2 and cfg.backbone.depth == 101
    assert cfg.backbone.deep_stem and cfg.trainer.max_iters == 80000
    cfg = _compose(["+experiment=psa_r50_d8_cityscapes_80k"])
    assert list(cfg.head.mask_size) == [97, 97]


@pytest.mark.parametrize("suffix,mask", [("r50_d8_cityscapes_80k", [97, 97]), ("r101_d8_cityscapes_80k", [97, 97]),
                                         ("r50_d8_ade20k_160k", [66, 66])])
def test_psa_recipes_use_mmsegs_masks_and_test_mode(suffix, mask):
    # The mask no longer has to cover the map (out-of-reach logits are 0, as the official op), so
    # PSANet tests like mmseg's recipe does: whole images, the mask sizes of mmseg's configs.
    cfg = _compose([f"+experiment=psa_{suffix}"])
    base = _compose([f"+experiment={'ade20k_r50_d8_160k' if 'ade' in suffix else 'cityscapes_' + suffix.split('_cityscapes')[0] + '_80k'}"])
    assert list(cfg.head.mask_size) == mask
    assert cfg.dataset.inference == base.dataset.inference and cfg.dataset.inference.mode == "whole"


def test_cityscapes_recipes_test_like_mmseg():
    assert _compose(["+experiment=cityscapes_r50_d8_80k"]).dataset.inference.mode == "whole"
    assert _compose(["dataset=cityscapes"]).dataset.inference.mode == "slide"


def test_misspelled_key_fails_at_composition_with_the_valid_keys():
    from hydra.errors import ConfigCompositionException

    from conftest import run_train

    # train.py stops before composing, naming the key and the keys that exist.
    with pytest.raises(SystemExit, match=r"trainer\.max_iter is not a config key.*max_iters, batch_size"):
        run_train(["trainer.max_iter=5"])
    with pytest.raises(SystemExit, match=r"model\.aux_head\.weigth is not a config key.*channels, weight"):
        run_train(["model.aux_head.weigth=0"])
    # Hydra itself refuses it, and a value of the wrong type, while composing against the schema.
    with pytest.raises(ConfigCompositionException, match="trainer.max_iter"):
        _compose(["trainer.max_iter=5"])
    with pytest.raises(ConfigCompositionException, match="trainer.max_iters=five"):
        _compose(["trainer.max_iters=five"])
    # An added key (+) gets past Hydra; the library refuses it with the valid keys.
    from segattn.config import TrainConfig

    added = OmegaConf.to_container(_compose(["+trainer.max_iter=5"]), resolve=True)
    with pytest.raises(ValueError, match=r"trainer\.max_iter is not a config key.*max_iters"):
        TrainConfig.from_dict(added)
    # Open nodes keep their group-specific keys.
    assert _compose(["head=ema", "head.num_bases=32"]).head.num_bases == 32


def test_yaml_values_are_the_schema_defaults():
    """conf/*.yaml is what users read, segattn/config.py what the library falls back on: they agree,
    and every key of a typed node is written in the yaml."""
    import dataclasses

    from segattn.config import EvalConfig, OptimizerConfig, SchedulerConfig, TrainConfig

    def check(yaml_node, schema_node, where, complete=True):
        yaml_node = {k: v for k, v in yaml_node.items() if k not in ("defaults", "hydra")}
        if complete:
            assert set(yaml_node) == set(schema_node), where
        for k, v in yaml_node.items():
            assert schema_node[k] == v, f"{where}.{k}: yaml {v!r}, schema {schema_node[k]!r}"

    train = OmegaConf.to_container(OmegaConf.load(os.path.join(CONF, "train.yaml")))
    schema = dataclasses.asdict(TrainConfig())
    for node in ("trainer", "model", "visualize"):
        check(train[node], schema[node], node)
    assert train["seed"] == schema["seed"] and train["resume"] == schema["resume"]
    check(OmegaConf.to_container(OmegaConf.load(os.path.join(CONF, "optimizer", "sgd.yaml"))),
          dataclasses.asdict(OptimizerConfig()), "optimizer", complete=False)
    check(OmegaConf.to_container(OmegaConf.load(os.path.join(CONF, "scheduler", "poly.yaml"))),
          dataclasses.asdict(SchedulerConfig()), "scheduler")
    check(OmegaConf.to_container(OmegaConf.load(os.path.join(CONF, "eval.yaml"))), dataclasses.asdict(EvalConfig()),
          "eval")
    # What the library reads for a key a caller leaves out is what train.py would have composed.
    composed = OmegaConf.to_container(_compose([]), resolve=True)
    assert TrainConfig.from_dict({}).trainer == TrainConfig.from_dict(composed).trainer
