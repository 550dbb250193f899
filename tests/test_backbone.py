import pytest
import torch
import torchvision

from segattn.models.backbone import ResNet


@pytest.mark.parametrize("depth", [18, 50])
def test_equals_torchvision_at_output_stride_32(depth):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")().eval()
    ours = ResNet(depth, output_stride=32).eval()
    result = ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = ours(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = []
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            y = layer(y)
            expected.append(y)
    for a, b in zip(feats, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_state_dict_keys_match_torchvision(depth):
    tv_keys = {k for k in getattr(torchvision.models, f"resnet{depth}")().state_dict() if not k.startswith("fc.")}
    assert set(ResNet(depth).state_dict()) == tv_keys


@pytest.mark.parametrize("os_, sizes", [(32, (16, 8, 4, 2)), (16, (16, 8, 4, 4)), (8, (16, 8, 8, 8))])
def test_output_strides(os_, sizes):
    net = ResNet(18, output_stride=os_, width=8).eval()
    feats = net(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == list(sizes)
    assert [f.shape[1] for f in feats] == net.channels == [8, 16, 32, 64]


def test_dilation_contracts_first_block():
    net = ResNet(50, output_stride=8)
    assert net.layer3[0].conv2.dilation == (1, 1) and net.layer3[1].conv2.dilation == (2, 2)
    assert net.layer4[0].conv2.dilation == (2, 2) and net.layer4[1].conv2.dilation == (4, 4)
    assert net.layer4[0].conv2.stride == (1, 1) and net.layer4[0].downsample[0].stride == (1, 1)


def test_deep_stem_layout():
    net = ResNet(50, deep_stem=True)
    keys = net.state_dict()
    assert "stem.0.weight" in keys and "stem.6.weight" in keys and "conv1.weight" not in keys
    assert keys["stem.0.weight"].shape == (32, 3, 3, 3) and keys["stem.6.weight"].shape == (64, 32, 3, 3)


def test_loads_torchvision_file(tmp_path):
    tv = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    net = ResNet(18, output_stride=8, pretrained=str(path))
    assert torch.equal(net.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)


def test_loads_openmmlab_v1c_file(tmp_path):
    src = ResNet(18, deep_stem=True)
    path = tmp_path / "resnet18_v1c.pth"
    torch.save({"meta": {}, "state_dict": {f"backbone.{k}": v for k, v in src.state_dict().items()}}, path)
    net = ResNet(18, deep_stem=True, pretrained=str(path))
    assert torch.equal(net.stem[3].weight, src.stem[3].weight)
    with pytest.raises(ValueError, match="deep_stem"):
        ResNet(18, deep_stem=False, pretrained=str(path))


def test_weights_by_name_are_looked_up_locally_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGATTN_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match=r"backbone.pretrained=resnet18: no local file.*never downloaded\. "
                                                r"Put resnet18-f37072fd.pth \(from https://download.pytorch.org/"):
        ResNet(18, pretrained="resnet18")
    # torchvision's cache from another machine (any hash after the name), or our own folder
    tv = torchvision.models.resnet18()
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(tv.state_dict(), hub / "resnet18-0000aaaa.pth")
    net = ResNet(18, pretrained="resnet18")
    assert torch.equal(net.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match=r"resnet50_v1c-2cccc1ad.pth \(from https://download.openmmlab.com/"):
        ResNet(50, deep_stem=True, pretrained="resnet50_v1c")
    with pytest.raises(FileNotFoundError, match=r"no such file .*a name looks in .*resnet18, resnet34"):
        ResNet(18, pretrained="resnet1")


def test_not_a_resnet_file(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"foo": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a ResNet checkpoint"):
        ResNet(18, pretrained=str(path))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ResNet(18, pretrained=str(tmp_path / "missing.pth"))


def test_frozen_bn_matches_eval_bn():
    torch.manual_seed(0)
    bn = ResNet(18, width=8, norm="bn")
    for m in bn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    frozen = ResNet(18, width=8, norm="frozenbn")
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = bn.eval()(x)[-1]
        b = frozen.train()(x)[-1]  # frozen BN ignores train mode
    assert torch.allclose(a, b, atol=1e-5)
    assert not [n for n, _ in frozen.named_parameters() if "bn" in n]  # statistics and affine are buffers


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)
    with pytest.raises(ValueError, match="output_stride"):
        ResNet(18, output_stride=4)
    with pytest.raises(ValueError, match="norm"):
        ResNet(18, norm="gn")
