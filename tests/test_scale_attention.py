"""model.scale_attention: Attention to Scale (Chen et al. 2016) around any Segmentor."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from segattn.engine.checkpoint import load_checkpoint
from segattn.models.attention.registry import check_taxonomy
from segattn.models.scale_attention import ScaleAttention
from segattn.models import Segmentor, build_model

from conftest import TINY, run_train

BB = dict(name="resnet18", depth=18, output_stride=8, width=8)
HEAD = dict(name="fcn", channels=16)


def _model(scales, head=HEAD, aux=None, seed=0):
    torch.manual_seed(seed)
    return build_model(BB, head, 4, aux or dict(channels=8), dict(scales=scales, channels=16))


def _randomise_attention(model, seed=1):
    # The last conv starts at zero (uniform weights); give it values so the weights vary per pixel.
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.attention[-1].weight, std=0.5)
    torch.nn.init.normal_(model.attention[-1].bias, std=0.5)


def test_taxonomy_and_paper_are_declared():
    check_taxonomy("scale_attention", ScaleAttention.taxonomy)
    assert ScaleAttention.taxonomy == dict(weights="conv", applied="elementwise", domain="spatial")
    assert "Attention to Scale" in ScaleAttention.paper and "2016" in ScaleAttention.paper


def test_off_by_default():
    assert type(build_model(BB, HEAD, 4, None, None)) is Segmentor
    assert type(build_model(BB, HEAD, 4, None, dict(scales=None, channels=512))) is Segmentor


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (9, 13)])
def test_weights_are_a_distribution_over_scales(size):
    model = _model([1.0, 0.75, 0.5]).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        w0 = model.scale_weights(x)
        _randomise_attention(model)
        w = model.scale_weights(x)
        logits = model(x)["out"]
    assert w.shape[:2] == (2, 3) and w.shape[-2:] == logits.shape[-2:]
    assert torch.allclose(w0, torch.full_like(w0, 1 / 3))  # starts as the average over scales
    assert torch.allclose(w.sum(1), torch.ones_like(w[:, 0]), atol=1e-6)
    assert (w > 0).all() and (w < 1).all()
    assert w.std(dim=(2, 3)).min() > 0  # per pixel, not one weight per image


def test_merge_is_the_weighted_sum_of_the_shared_network_on_each_scale():
    model = _model([1.0, 0.5]).eval()
    _randomise_attention(model)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        merged = model(x)["out"]
        w = model.scale_weights(x)
        plain = model.segmentor
        full = plain(x)["out"]
        half = plain(F.interpolate(x, size=(20, 28), mode="bilinear", align_corners=False))["out"]
        half = F.interpolate(half, size=full.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(merged, w[:, :1] * full + w[:, 1:] * half, atol=1e-5)
    # The result depends on the weights: not the plain average.
    assert not torch.allclose(merged, (full + half) / 2, atol=1e-3)


@pytest.mark.parametrize("size", [(32, 32), (33, 47)])
def test_one_scale_equals_the_plain_segmentor(size):
    model = _model([1.0])
    _randomise_attention(model)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x)["out"], model.segmentor(x)["out"])
        assert torch.equal(model.predict(x), model.segmentor.predict(x))
        model.train()
        torch.manual_seed(5)
        ours = model(x)
        torch.manual_seed(5)
        plain = model.segmentor(x)  # the same dropout draws: the wrapper runs the same ops in the same order
    assert torch.equal(ours["out"], plain["out"]) and torch.equal(ours["out_x1"], plain["out"])
    assert torch.equal(ours["aux_x1"], plain["aux"])


def test_every_scale_is_supervised():
    model = _model([1.0, 0.75, 0.5]).train()
    x, t = torch.randn(2, 3, 33, 47), torch.randint(0, 4, (2, 33, 47))
    out = model(x)
    assert set(out) == {"out", "out_x1", "aux_x1", "out_x0.75", "aux_x0.75", "out_x0.5", "aux_x0.5"}
    assert out["out_x0.5"].shape[-2:] == (3, 3)  # 33x47 -> 17x24 -> 3x3 at output stride 8
    assert out["out"].shape[-2:] == out["out_x1"].shape[-2:] == (5, 6)  # merged at the largest scale
    weights = model.loss_weights()
    assert weights == {"out": 1.0, "out_x1": 1.0, "aux_x1": 0.4, "out_x0.75": 1.0, "aux_x0.75": 0.4,
                       "out_x0.5": 1.0, "aux_x0.5": 0.4}
    total, parts = model.loss(out, t)
    assert set(parts) == set(out)
    for k, v in parts.items():
        ce = F.cross_entropy(F.interpolate(out[k], size=t.shape[-2:], mode="bilinear", align_corners=False), t)
        assert torch.allclose(v, ce.detach(), atol=1e-6), k
    assert torch.allclose(total.detach(), sum(weights[k] * v for k, v in parts.items()), atol=1e-5)


def test_works_around_a_head_with_image_level_outputs():
    """SANet's presence logits (N, K) keep their BCE loss at every scale (the plain model's loss kinds)."""
    head = dict(name="sa", channels=8, stages=["c4", "c5"], class_presence_loss=True)
    model = _model([1.0, 0.5], head=head, aux=dict(weight=0)).train()
    x, t = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    out = model(x)
    assert out["presence_x0.5"].shape == (2, 4)
    total, parts = model.loss(out, t)
    assert torch.isfinite(total) and {"presence_x1", "presence_x0.5", "mask_c4_x0.5"} <= set(parts)


@pytest.mark.parametrize("scales", [[1.0, 0.5], [1.0, 0.75, 0.5]])
def test_every_parameter_is_trained(scales):
    """Two SGD steps: the first moves the zero-initialised last conv of the attention model, after which
    every parameter (backbone, head, auxiliary head, attention model) gets a non-zero gradient."""
    model = _model(scales).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t = torch.randn(2, 3, 33, 47), torch.randint(0, 4, (2, 33, 47))
    for _ in range(2):
        opt.zero_grad()
        loss, _ = model.loss(model(x), t)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad
    assert {n for n, _ in model.named_parameters() if n.startswith("attention.")}


def test_with_block_attention_inside():
    torch.manual_seed(0)
    model = build_model(dict(BB, block_attention="eca"), HEAD, 4, None, dict(scales=[1.0, 0.5], channels=8)).eval()
    y = model.predict(torch.randn(1, 3, 17, 23))
    assert y.shape == (1, 4, 17, 23) and torch.isfinite(y).all()


def test_bad_configuration_names_the_key():
    for scales in ([], [0.0], [1.0, -0.5], [1.0, 1.0], ["a"]):
        with pytest.raises(ValueError, match=r"model\.scale_attention\.scales"):
            _model(scales)
    with pytest.raises(ValueError, match=r"model\.scale_attention has unknown keys \['size'\]"):
        build_model(BB, HEAD, 4, None, dict(scales=[1.0], size=3))


def test_train_py_with_scale_attention(tiny_root, tmp_path):
    run_dir = str(tmp_path / "run")
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=2", "trainer.val_interval=2",
               "trainer.log_interval=1", "model.scale_attention.scales=[1.0,0.5]", "model.scale_attention.channels=16",
               f"hydra.run.dir={run_dir}"])
    assert 0.0 <= json.load(open(os.path.join(run_dir, "metrics.json")))["mIoU"] <= 1.0
    ckpt = load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))
    assert "attention.0.weight" in ckpt["model"] and "segmentor.backbone.conv1.weight" in ckpt["model"]
    cfg = ckpt["config"]
    assert cfg["model"]["scale_attention"]["scales"] == [1.0, 0.5]
    # What eval.py does: rebuild from the stored config and load.
    model = build_model(cfg["backbone"], cfg["head"], cfg["num_classes"], cfg["model"]["aux_head"],
                        cfg["model"]["scale_attention"])
    model.load_state_dict(ckpt["model"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss_out", "train/loss_out_x1", "train/loss_out_x0.5", "train/loss_aux_x0.5"} <= tags
