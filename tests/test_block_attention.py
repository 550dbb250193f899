"""backbone.block_attention: the gates inside every residual block (SE-/CBAM-/ECA-/SGE-/GC-ResNet)."""

import json
import math
import os

import pytest
import torch
import torchvision

from segattn.engine.checkpoint import load_checkpoint
from segattn.models.attention import ATTENTIONS
from segattn.models.backbone import ResNet
from segattn.models.block_attention import BLOCK_ATTENTIONS, block_attention
from segattn.models import build_model

from conftest import TINY, run_train

TINY_BB = dict(name="resnet18", depth=18, output_stride=8, width=8)
# Narrow test widths: SGE needs groups dividing 8; SE/CBAM reduction 1 so that a 1-unit hidden
# layer (8 // 16 -> 1) that happens to be dead under ReLU does not leave a parameter without gradient.
# BAM likewise (reduction 1); shuffle attention needs 2 * groups dividing 8.
TINY_KW = {"sge": {"groups": 8}, "se": {"reduction": 1}, "cbam": {"reduction": 1}, "bam": {"reduction": 1},
           "shuffle": {"groups": 4}}


def _tv_file(tmp_path, depth=18):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")().eval()
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(tv.state_dict(), path)
    return tv, str(path)


def _parameter_free(name: str) -> bool:
    """A gate with neither parameters nor buffers (SimAM) adds nothing to a state dict."""
    return not ATTENTIONS[name](64).state_dict()


def _blocks(net):
    return [b for i in range(1, 5) for b in getattr(net, f"layer{i}")]


@pytest.mark.parametrize("name", BLOCK_ATTENTIONS)
def test_torchvision_weights_load_with_block_attention(name, tmp_path):
    tv, path = _tv_file(tmp_path)
    model = build_model(dict(name="resnet18", depth=18, output_stride=8, pretrained=path, block_attention=name),
                        dict(name="fcn", channels=16), 3, dict(weight=0))
    net = model.backbone
    blocks = _blocks(net)
    assert all(type(b.attention) is ATTENTIONS[name] for b in blocks)
    assert torch.isfinite(net.eval()(torch.randn(1, 3, 32, 32))[-1]).all()
    ours = net.state_dict()
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(ours[k], v), k
    # Exactly the attention modules are new (none for a parameter-free gate: SimAM).
    new = {k for k in ours if k not in tv.state_dict()}
    assert (new or _parameter_free(name)) and all(".attention." in k for k in new)


def test_attention_modules_keep_their_own_initialisation(tmp_path):
    """ResNet's Kaiming fan-out init must not reach the modules inside the blocks."""
    _, path = _tv_file(tmp_path)
    bb = dict(depth=18, output_stride=8, pretrained=path)
    gc = ResNet(**bb, block_attention=block_attention("gc"))
    for b in _blocks(gc):
        last = b.attention.channel_add_conv[-1]
        assert not last.weight.any() and not last.bias.any()  # GC: zero last conv
        # conv_mask is Kaiming fan-in (std sqrt(2/C) <= 0.18 here); fan-out (1 output) would give std 1.41.
        assert b.attention.conv_mask.weight.std() < 0.3
    sge = ResNet(**bb, block_attention=block_attention("sge"))
    for b in _blocks(sge):
        assert (b.attention.weight == 0).all() and (b.attention.bias == 1).all()
    cbam = ResNet(**bb, block_attention=block_attention("cbam"))
    for b in _blocks(cbam):
        w = b.attention.spatial_gate.conv.weight  # PyTorch default: uniform within 1/sqrt(fan_in)
        assert w.abs().max() <= 1 / math.sqrt(w[0].numel())
    eca = ResNet(**bb, block_attention=block_attention("eca"))
    assert [b.attention.k_size for b in _blocks(eca)] == [3, 3, 5, 5, 5, 5, 5, 5]  # the paper's adaptive k per width
    se = ResNet(**bb, block_attention=block_attention("se"))
    assert [b.attention.hidden for b in _blocks(se)] == [4, 4, 8, 8, 16, 16, 32, 32]  # exactly C / 16


def test_gc_resnet_at_init_equals_torchvision_resnet(tmp_path):
    tv, path = _tv_file(tmp_path)
    ours = ResNet(18, output_stride=32, pretrained=path, block_attention=block_attention("gc")).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = ours(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        for layer, f in zip((tv.layer1, tv.layer2, tv.layer3, tv.layer4), feats):
            y = layer(y)
            assert torch.equal(f, y)


@pytest.mark.parametrize("depth", [18, 50])
def test_gc_resnet_at_init_equals_plain_resnet_on_the_same_weights(depth):
    torch.manual_seed(0)
    gc = ResNet(depth, width=8, block_attention=block_attention("gc")).train()
    plain = ResNet(depth, width=8).train()
    assert not plain.load_state_dict(gc.state_dict(), strict=False).missing_keys
    x = torch.randn(2, 3, 33, 47)
    for a, b in zip(gc(x), plain(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("depth", [18, 50])
def test_sge_resnet_at_init_rescales_the_residual_branch_by_sigmoid_1(depth):
    """SGE starts with weight 0, bias 1: every block is the plain block with its last BN scaled by sigmoid(1)."""
    torch.manual_seed(0)
    sge = ResNet(depth, width=16, block_attention=block_attention("sge", {"groups": 16})).eval()
    plain = ResNet(depth, width=16).eval()
    missing = plain.load_state_dict(sge.state_dict(), strict=False)
    assert not missing.missing_keys
    k = 1 / (1 + math.exp(-1))
    with torch.no_grad():
        for b in _blocks(plain):
            last_bn = b.bn3 if depth == 50 else b.bn2
            last_bn.weight.mul_(k)
            last_bn.bias.mul_(k)
        x = torch.randn(2, 3, 48, 40)
        for a, b in zip(sge(x), plain(x)):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_attention_sits_before_the_residual_sum():
    """With SE's gate forced to 0 a block outputs relu(identity): the gate scales the residual branch only."""
    torch.manual_seed(0)
    net = ResNet(18, width=8, block_attention=block_attention("se")).eval()
    with torch.no_grad():
        for b in _blocks(net):
            b.attention.fc[2].weight.zero_()
            b.attention.fc[2].bias.fill_(-1e4)
        x = torch.randn(2, 8, 16, 16)
        block = net.layer2[0]  # has a strided downsample
        assert torch.equal(block(x), torch.relu(block.downsample(x)))
        x = torch.randn(2, 16, 8, 8)
        assert torch.equal(net.layer2[1](x), torch.relu(x))


@pytest.mark.parametrize("name", BLOCK_ATTENTIONS)
def test_every_parameter_is_trained(name):
    """Two SGD steps of the whole Segmentor: after the first (which moves GC's zero-initialised last conv),
    every parameter, those inside the blocks included, has a non-zero gradient."""
    torch.manual_seed(0)
    model = build_model(dict(TINY_BB, block_attention=name, block_attention_kwargs=TINY_KW.get(name, {})),
                        dict(name="fcn", channels=16), 4, dict(channels=8)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t = torch.randn(4, 3, 33, 47), torch.randint(0, 4, (4, 33, 47))
    for _ in range(2):
        opt.zero_grad()
        loss, _ = model.loss(model(x), t)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad
    assert any(".attention." in n for n, _ in model.named_parameters()) or _parameter_free(name)


@pytest.mark.parametrize("size", [(1, 1), (17, 23), (33, 47)])
@pytest.mark.parametrize("name", BLOCK_ATTENTIONS)
def test_odd_sizes(name, size):
    torch.manual_seed(0)
    model = build_model(dict(TINY_BB, block_attention=name, block_attention_kwargs=TINY_KW.get(name, {})),
                        dict(name="fcn", channels=8), 3, dict(weight=0)).eval()
    x = torch.randn(1, 3, *size)
    y = model.predict(x)
    assert y.shape == (1, 3, *size) and torch.isfinite(y).all()


def test_refused_names_explain_and_list_the_choices():
    choices = ", ".join(BLOCK_ATTENTIONS)  # cbam, coordatt, eca, gc, se, sge
    with pytest.raises(ValueError, match=rf"'sk' is not supported.*3x3 conv.*head=sk.*{choices}"):
        build_model(dict(TINY_BB, block_attention="sk"), dict(name="fcn"), 3)
    for name in ("nl", "da", "nonsense"):
        with pytest.raises(ValueError, match=rf"backbone\.block_attention.*choices: {choices}"):
            build_model(dict(TINY_BB, block_attention=name), dict(name="fcn"), 3)
    with pytest.raises(ValueError, match=r"groups=64 does not divide.*block_attention_kwargs\.groups to a divisor of 8"):
        build_model(dict(TINY_BB, block_attention="sge"), dict(name="fcn"), 3)
    with pytest.raises(ValueError, match=r"block_attention_kwargs.*accepts reduction"):
        build_model(dict(TINY_BB, block_attention="se", block_attention_kwargs={"groups": 4}), dict(name="fcn"), 3)
    with pytest.raises(ValueError, match=r"block_attention is null"):
        build_model(dict(TINY_BB, block_attention=None, block_attention_kwargs={"reduction": 4}), dict(name="fcn"), 3)
    # The full-width ResNet-18 takes SGE's 64 groups (64 channels in stage 1: one channel per group).
    assert build_model(dict(TINY_BB, width=64, block_attention="sge"), dict(name="fcn", channels=8), 3)


@pytest.mark.parametrize("name", BLOCK_ATTENTIONS)
def test_train_py_with_block_attention(name, tiny_root, tmp_path):
    run_dir = str(tmp_path / "run")
    # TINY's backbone.width=16: SGE's groups must divide 16 (new keys under block_attention_kwargs need a +).
    extra = ["+backbone.block_attention_kwargs.groups=16"] if name == "sge" else []
    run_train([*TINY, f"dataset.root={tiny_root}", "trainer.max_iters=2", "trainer.val_interval=2",
               f"backbone.block_attention={name}", *extra, f"hydra.run.dir={run_dir}"])
    assert 0.0 <= json.load(open(os.path.join(run_dir, "metrics.json")))["mIoU"] <= 1.0
    ckpt = load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))
    assert any(k.startswith("backbone.layer4.1.attention.") for k in ckpt["model"]) or _parameter_free(name)
    assert ckpt["config"]["backbone"]["block_attention"] == name
    # What eval.py does: rebuild from the stored config and load.
    cfg = ckpt["config"]
    model = build_model(cfg["backbone"], cfg["head"], cfg["num_classes"], cfg["model"]["aux_head"])
    model.load_state_dict(ckpt["model"])


def test_config_keys_compose_and_build():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from conftest import REPO

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        plain = compose(config_name="train")
        cfg = compose(config_name="train", overrides=["backbone.width=8", "backbone.block_attention=sge",
                                                      "+backbone.block_attention_kwargs.groups=8"])
    GlobalHydra.instance().clear()
    assert plain.backbone.block_attention is None and dict(plain.backbone.block_attention_kwargs) == {}
    c = OmegaConf.to_container(cfg, resolve=True)
    model = build_model(c["backbone"], dict(c["head"], channels=8), 3, c["model"]["aux_head"])
    assert all(b.attention.groups == 8 for b in _blocks(model.backbone))


def test_the_docs_table_names_every_block_attention():
    """docs/block-and-scale-attention.md has a row (defaults, start) for every ``backbone.block_attention`` choice."""
    from conftest import REPO

    text = open(os.path.join(REPO, "docs", "block-and-scale-attention.md")).read()
    rows = {line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")}
    assert set(BLOCK_ATTENTIONS) <= rows, sorted(set(BLOCK_ATTENTIONS) - rows)
