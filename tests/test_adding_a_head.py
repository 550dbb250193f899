"""docs/adding-a-head.md, done on a toy head: one head file and one yaml, written to a temporary folder,
and nothing else. The head then trains (train.py), evaluates with attention pictures (eval.py), exports
(export.py), and passes the registry-wide tests of every head; afterwards it is gone from the registry."""

import glob
import importlib.util
import json
import os
import shutil
import sys

import pytest
import torch

import segattn
import test_deploy
import test_heads
from conftest import REPO, TINY, run_eval, run_train
from segattn.deploy import FORMATS, export_checkpoint, export_reason, load_exported
from segattn.models.heads import HEADS, head_facts, head_names, head_options

# The whole head: what docs/adding-a-head.md asks of a new head file (facts on the class, the base
# head's classifier and stage choice, a registered mechanism inside).
TOY_HEAD = '''"""A toy decode head: GCNet's context block between a 3x3 reduction and the classifier."""

from segattn.models.attention import build_attention
from segattn.models.heads import BaseDecodeHead, register_head
from segattn.models.layers import conv_bn_relu


@register_head("toy")
class ToyHead(BaseDecodeHead):
    """3x3 conv-BN-ReLU on c5 to ``channels``, a global context block (``ratio``), dropout, classifier."""

    paper = "A toy head for the tests (2026)"
    reference = "none: the docs' example"
    deviations = "a toy"
    published = {"r50_d8_cityscapes_80k": 1.0}
    export_static_only = {"onnx": "the toy says so"}

    def __init__(self, in_channels, num_classes, channels=512, dropout=0.1, ratio=0.25):
        super().__init__()
        self.reduce = conv_bn_relu(int(in_channels[self.in_index]), channels)
        self.attention = build_attention("gc", channels, ratio=ratio)
        self.build_classifier(channels, num_classes, dropout)

    def forward(self, feats):
        return self.classify(self.attention(self.reduce(self.inputs(feats))))
'''
TOY_YAML = "name: toy\nchannels: 32\ndropout: 0.1\nratio: 0.25\n"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy's two files in a folder laid out as the repository (``conf/head``), imported; the
    folder. The real ``fcn.yaml`` is copied beside it (the registry-wide yaml test reads another head)."""
    root = tmp_path_factory.mktemp("toy_repo")
    (root / "conf" / "head").mkdir(parents=True)
    (root / "conf" / "head" / "toy.yaml").write_text(TOY_YAML)
    shutil.copy(os.path.join(REPO, "conf", "head", "fcn.yaml"), root / "conf" / "head")
    (root / "toy_head.py").write_text(TOY_HEAD)
    spec = importlib.util.spec_from_file_location("toy_head", root / "toy_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs @register_head("toy")
    yield root
    HEADS.pop("toy")
    sys.modules.pop("toy_head", None)
    assert "toy" not in head_names()


def test_the_toy_is_registered_with_its_facts(toy):
    assert "toy" in head_names()
    facts = head_facts("toy")
    assert facts.paper == "A toy head for the tests (2026)" and facts.published == {"r50_d8_cityscapes_80k": 1.0}
    assert facts.taxonomy is None  # a head, not a mechanism
    assert head_options("toy") == {"channels", "dropout", "ratio"}
    assert export_reason("toy", "onnx", dynamic=True).startswith("the toy says so")
    assert export_reason("toy", "torchscript", dynamic=True) is None


def test_the_toy_passes_the_registry_wide_tests(toy, monkeypatch, tmp_path):
    monkeypatch.setattr(test_heads, "REPO", str(toy))
    monkeypatch.setattr(test_deploy, "REPO", str(toy))
    test_heads.test_head_config_builds_and_predicts("toy")
    test_heads.test_every_parameter_gets_a_gradient_and_a_few_steps_lower_the_loss("toy")
    test_heads.test_head_yaml_keys_are_the_heads_options_and_a_foreign_node_is_named("toy")
    for fmt in ("exported_program", "torchscript"):
        test_deploy._export_and_compare("toy", fmt, tmp_path)


def test_the_toy_trains_evaluates_exports_and_draws(toy, tiny_root, tmp_path):
    run = tmp_path / "run"
    run_train([*TINY, "head=toy", f"hydra.searchpath=[file://{toy / 'conf'}]", f"dataset.root={tiny_root}",
               "trainer.max_iters=2", "trainer.val_interval=2", f"hydra.run.dir={run}"])
    ckpt = str(run / "checkpoints" / "last.pt")
    assert 0.0 <= json.load(open(run / "metrics.json"))["mIoU"] <= 1.0 and os.path.isfile(ckpt)

    pictures = tmp_path / "pictures"
    run_eval([f"checkpoint={ckpt}", "progress=false", "visualize.points=[[10,20]]",
                       f"visualize.out_dir={pictures}", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert 0.0 <= json.load(open(tmp_path / "eval" / "eval.json"))["mIoU"] <= 1.0
    assert glob.glob(str(pictures / "*head_attention.png"))  # the context block's spatial attention

    info = export_checkpoint(ckpt, "exported_program", str(tmp_path / ("toy" + FORMATS["exported_program"])), [64, 64])
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(load_exported(info["path"])(x), segattn.load(ckpt).model.predict(x), atol=1e-4, rtol=0)
