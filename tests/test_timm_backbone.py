"""backbone=timm: timm encoders dilated to output stride 8 under the unchanged heads, weights from a local
file or the hub cache and never downloaded, and a refusal that names the limit where a model cannot dilate."""

import json
import os

import pytest
import torch

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

from segattn.engine.trainer import train_step  # noqa: E402
from segattn.models import build_model  # noqa: E402
from segattn.models.timm_backbone import TimmBackbone  # noqa: E402

from conftest import run_train  # noqa: E402

MODEL = "resnet10t"  # timm's smallest ResNet-D-style network (a 3-conv stem, avg-pool downsampling)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    for name in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        if hasattr(builder, name):
            monkeypatch.setattr(builder, name, refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.mark.parametrize("model", [MODEL, "regnetx_002"])
def test_features_at_output_stride_8_are_the_undilated_network_with_dilation(model):
    torch.manual_seed(0)
    dilated = TimmBackbone(model, output_stride=8).eval()
    plain = timm.create_model(model, pretrained=False, features_only=True).eval()
    plain.load_state_dict(dilated.body.state_dict())  # the same weights: dilation changes no parameter
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats, plain_feats = dilated(x), plain(x)[-4:]
    assert dilated.reductions == [4, 8, 8, 8] and dilated.channels == plain.feature_info.channels()[-4:]
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 64 // r, 64 // r) for c, r in zip(dilated.channels, [4, 8, 8, 8])]
    assert [f.shape[-1] for f in plain_feats] == [16, 8, 4, 2]
    # up to the first dilated stage both networks compute the same thing; after it they differ
    assert torch.allclose(feats[0], plain_feats[0], atol=1e-5) and torch.allclose(feats[1], plain_feats[1], atol=1e-5)
    assert not torch.allclose(feats[3].mean((2, 3)), plain_feats[3].mean((2, 3)), atol=1e-3)


def test_a_head_trains_on_a_timm_encoder():
    torch.manual_seed(0)
    model = build_model({"name": "timm", "model": MODEL, "output_stride": 8, "pretrained": None},
                        {"name": "cc", "channels": 32}, num_classes=3, aux_head={"channels": 16})
    images, masks = torch.randn(2, 3, 48, 48), torch.randint(0, 3, (2, 48, 48))
    masks[:, :4] = 255
    out = model(images)
    assert out["out"].shape == (2, 3, 6, 6) and out["aux"].shape == (2, 3, 6, 6)  # stride 8 for both heads
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = train_step(model, {"image": images, "mask": masks}, opt)
    assert step.finite and float(step.loss) > 0
    after = model.state_dict()
    assert not torch.equal(before["backbone.body.conv1.0.weight"], after["backbone.body.conv1.0.weight"])
    changed = {k.split(".")[0] for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])}
    assert changed == {"backbone", "head", "aux_head"}  # the gradient reaches the encoder through both heads


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_weights_come_from_a_local_file(tmp_path, fmt):
    torch.manual_seed(1)
    source = timm.create_model(MODEL, pretrained=False)  # the classification network, as published
    path = str(tmp_path / f"weights.{fmt}")
    if fmt == "safetensors":
        safetensors_torch.save_file(source.state_dict(), path)
    else:
        torch.save(source.state_dict(), path)
    backbone = TimmBackbone(MODEL, output_stride=8, pretrained=path)
    own = backbone.body.state_dict()
    assert own and all(torch.equal(v, source.state_dict()[k]) for k, v in own.items())  # every weight, the file's
    assert "fc.weight" not in own  # the classifier is left out
    wrong = str(tmp_path / "wrong.safetensors")
    safetensors_torch.save_file(timm.create_model("resnet18", pretrained=False).state_dict(), wrong)
    with pytest.raises(ValueError, match=r"backbone.pretrained='.*wrong.safetensors' does not fit backbone.model"):
        TimmBackbone(MODEL, pretrained=wrong)
    with pytest.raises(FileNotFoundError, match=r"backbone.pretrained='/nowhere.pth': no such file .*never downloaded"):
        TimmBackbone(MODEL, pretrained="/nowhere.pth")


def test_hub_takes_the_copy_in_the_hub_cache_or_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match=r"backbone.pretrained=hub: the weights of backbone.model='resnet10t' "
                                                r"are not on this machine .*models--timm--resnet10t"):
        TimmBackbone(MODEL, pretrained="hub")
    # the layout huggingface_hub keeps: models--<org>--<name>/snapshots/<revision>/, refs/main names it
    repo = tmp_path / "hub" / ("models--" + timm.models.get_pretrained_cfg(MODEL).hf_hub_id.replace("/", "--"))
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    torch.manual_seed(2)
    source = timm.create_model(MODEL, pretrained=False)
    safetensors_torch.save_file(source.state_dict(), str(repo / "snapshots" / "abc123" / "model.safetensors"))
    backbone = TimmBackbone(MODEL, pretrained="hub")
    assert torch.equal(backbone.body.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])


@pytest.mark.parametrize("model, why", [("vit_tiny_patch16_224", "unexpected keyword argument 'output_stride'"),
                                        ("ghostnet_050", "only output_stride==32 is valid, dilation not supported")])
def test_a_model_that_cannot_dilate_is_refused_naming_the_limit(model, why):
    with pytest.raises(ValueError, match=rf"backbone.model='{model}' cannot give features at "
                                         rf"backbone.output_stride=8: timm's model cannot dilate its last stages "
                                         rf"\(.*{why}.*\).*backbone.output_stride=32"):
        TimmBackbone(model, output_stride=8)
    with pytest.raises(ValueError, match=r"backbone.block_attention=se needs backbone=resnet\*"):
        build_model({"name": "timm", "model": MODEL, "block_attention": "se"}, {"name": "fcn"}, num_classes=2)
    with pytest.raises(ValueError, match=r"backbone.depth is not a key of backbone=timm"):
        build_model({"name": "timm", "model": MODEL, "depth": 50}, {"name": "fcn"}, num_classes=2)


def test_train_py_with_a_timm_encoder(tiny_root, tmp_path):
    """From the entry point: two iterations, and best.safetensors rebuilds the same timm model."""
    import segattn

    run_dir = tmp_path / "run"
    run_train(["backbone=timm", f"backbone.model={MODEL}", "head.channels=32", "model.aux_head.channels=16",
               "dataset.crop_size=[64,64]", "trainer.batch_size=2", "trainer.num_workers=0", "trainer.progress=false",
               f"dataset.root={tiny_root}", "trainer.max_iters=2", "trainer.val_interval=2",
               f"hydra.run.dir={run_dir}"])
    record = json.load(open(run_dir / "checkpoints" / "best.json"))
    assert record["config"]["backbone"] == {"name": "timm", "model": MODEL, "output_stride": 8, "pretrained": None,
                                            "block_attention": None}
    predictor = segattn.load(str(run_dir / "checkpoints" / "best.safetensors"))
    assert isinstance(predictor.model.backbone, TimmBackbone) and predictor.model.backbone.reductions == [4, 8, 8, 8]
    assert os.path.isfile(run_dir / "metrics.json")
