"""Dilated ResNet-18..152 whose ``state_dict`` keys match torchvision's ``resnet{depth}``.

Output stride 8/16 is obtained the DeepLab/PSPNet way: the stride of the last one or two stages is
replaced by dilation (2 then 4), so the receptive field grows while the feature map keeps its size.
``deep_stem`` is ResNet-V1c (three 3x3 convs instead of the 7x7), the stem of the open-mmlab
weights that the published segmentation recipes start from.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn as nn

# depth -> (block, layers): the torchvision table.
ARCH = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}

# output_stride -> (strides, dilations) of layer1..layer4.
STRIDES = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}


# ImageNet weights by name (backbone.pretrained=resnet50): the file names torchvision and open-mmlab
# publish. Nothing is downloaded: the name is looked up in local folders, and when the file is not
# there the error says which file to put where.
WEIGHT_FILES = {
    "resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth",
    "resnet152": "resnet152-394f9c45.pth",
    "resnet50_v1c": "resnet50_v1c-2cccc1ad.pth", "resnet101_v1c": "resnet101_v1c-e67eebb6.pth",
}
WEIGHT_URLS = {name: (f"https://download.openmmlab.com/pretrain/third_party/{f}" if "v1c" in name
                      else f"https://download.pytorch.org/models/{f}") for name, f in WEIGHT_FILES.items()}


def weight_dirs() -> list[str]:
    """Where a named checkpoint is looked for: $SEGATTN_WEIGHTS, ~/.cache/segattn/weights, and
    torch hub's cache (where torchvision keeps what it downloaded on another machine)."""
    dirs = [os.environ.get("SEGATTN_WEIGHTS", ""), os.path.expanduser("~/.cache/segattn/weights")]
    torch_home = os.environ.get("TORCH_HOME", os.path.expanduser("~/.cache/torch"))
    return [d for d in dirs + [os.path.join(torch_home, "hub", "checkpoints")] if d]


def find_weights(path: str) -> str:
    """``backbone.pretrained``: a file path, or a name of ``WEIGHT_FILES`` found in ``weight_dirs()``."""
    if os.path.isfile(path):
        return path
    if path in WEIGHT_FILES:
        prefix = WEIGHT_FILES[path].split("-")[0] + "-"
        for d in weight_dirs():
            found = sorted(f for f in (os.listdir(d) if os.path.isdir(d) else []) if f.startswith(prefix)
                           and f.endswith((".pth", ".pt")))
            if found:
                return os.path.join(d, found[0])
        raise FileNotFoundError(
            f"backbone.pretrained={path}: no local file for these weights, and weights are never downloaded. "
            f"Put {WEIGHT_FILES[path]} (from {WEIGHT_URLS[path]}) in one of {', '.join(weight_dirs())}, or give "
            f"its path: backbone.pretrained=/path/to/{WEIGHT_FILES[path]}")
    raise FileNotFoundError(f"backbone.pretrained={path!r}: no such file (weights are never downloaded; "
                            f"a name looks in {', '.join(weight_dirs())}: {', '.join(WEIGHT_FILES)})")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (as torchvision.ops.FrozenBatchNorm2d).

    Keys match nn.BatchNorm2d (weight, bias, running_mean, running_var) so checkpoints load either way.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, init in (("weight", torch.ones), ("bias", torch.zeros), ("running_mean", torch.zeros), ("running_var", torch.ones)):
            self.register_buffer(name, init(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # BN has it, frozen BN does not need it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "syncbn": nn.SyncBatchNorm,
    "frozenbn": FrozenBatchNorm2d,
}


def norm_layer(norm: str | Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    if callable(norm):
        return norm
    if norm not in NORMS:
        raise ValueError(f"backbone.norm={norm!r} is not a known norm; choices: {', '.join(NORMS)}")
    return NORMS[norm]


def conv3x3(cin, cout, stride=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, norm=nn.BatchNorm2d, attention=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm(planes)
        self.downsample = downsample
        # SE-ResNet style: the attention sits after the last BN, before the residual sum.
        self.attention = attention(planes) if attention is not None else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attention is not None:
            out = self.attention(out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    # torchvision's ResNet-V1.5: the stride sits on the 3x3 conv.
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, norm=nn.BatchNorm2d, attention=None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.attention = attention(planes * self.expansion) if attention is not None else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attention is not None:
            out = self.attention(out)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Dilated ResNet; ``forward`` returns the four stage outputs ``[c2, c3, c4, c5]``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        output_stride: 8, 16 or 32 (32 is the classification network).
        deep_stem: ResNet-V1c stem (3x3 convs 3->w/2->w/2->w, stored as ``stem.0..stem.8``, the
            open-mmlab key layout) instead of the 7x7 ``conv1``/``bn1``.
        norm: "bn", "syncbn", "frozenbn" or a callable ``num_features -> nn.Module``.
        pretrained: optional path of a local checkpoint (torchvision, open-mmlab or ours).
        block_attention: optional callable ``channels -> nn.Module`` put inside every residual block.
        width: channels of the stem / first stage (64 in every published model; tiny tests use less).
    """

    def __init__(self, depth=50, output_stride=8, deep_stem=False, norm="bn", pretrained=None,
                 block_attention=None, width=64):
        super().__init__()
        if depth not in ARCH:
            raise ValueError(f"backbone.depth={depth!r}; expected one of {sorted(ARCH)}")
        if output_stride not in STRIDES:
            raise ValueError(f"backbone.output_stride={output_stride!r}; expected one of {sorted(STRIDES)}")
        kind, layers = ARCH[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        norm = norm_layer(norm)
        self.depth, self.output_stride, self.deep_stem = depth, output_stride, deep_stem
        if deep_stem:
            half = width // 2
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, 2, 1, bias=False), norm(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, 1, 1, bias=False), norm(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, width, 3, 1, 1, bias=False), norm(width), nn.ReLU(inplace=True),
            )
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = norm(width)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        strides, dilations = STRIDES[output_stride]
        self.inplanes = width
        self.channels = []
        for i, (n, s, d) in enumerate(zip(layers, strides, dilations)):
            planes = width * 2**i
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, n, s, d, norm, block_attention))
            self.channels.append(planes * block.expansion)

        # Attention modules inside the blocks keep their own initialisation (e.g. zero-init gates).
        for name, m in self.named_modules():
            if ".attention" in name:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if pretrained:
            self.load_pretrained(pretrained)

    def _make_layer(self, block, planes, blocks, stride, dilation, norm, attention):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                norm(planes * block.expansion),
            )
        # As in DeepLab/mmseg: the first block of a dilated stage uses half the dilation
        # (the stage used to down-sample there), the others the full dilation.
        first_dilation = max(1, dilation // 2) if dilation > 1 else 1
        layers = [block(self.inplanes, planes, stride, first_dilation, downsample, norm, attention)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation, None, norm, attention) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs

    def load_pretrained(self, path: str) -> dict:
        """Load weights from a local file; returns ``{"missing": [...], "unexpected": [...]}``.

        Recognised by their keys: a torchvision ImageNet checkpoint (``conv1.weight``), an
        open-mmlab ResNetV1c checkpoint (``stem.0.weight``, possibly under ``state_dict`` and
        prefixed with ``backbone.``), or one of our own checkpoints (``model`` holding
        ``backbone.*``). The classifier ``fc.*`` is dropped; a stem that does not match the
        configured ``deep_stem`` is an error, since loading half a network silently is worse.
        """
        path = find_weights(path)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # weights_only refused a Python object: unpickling it could run code
            raise ValueError(f"backbone.pretrained={path!r} holds Python objects, not only tensors; it is "
                             f"refused, since unpickling such a file can run code (weights_only=True)") from None
        except Exception as e:
            raise ValueError(f"backbone.pretrained={path!r} cannot be loaded (truncated, or not a torch file): "
                             f"{type(e).__name__}: {str(e).split('. ')[0][:200]}") from None
        if not isinstance(sd, dict):
            raise ValueError(f"backbone.pretrained={path!r}: expected a dict of weights, got {type(sd).__name__}")
        if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
            sd = sd["model"]  # our own checkpoint
        elif isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]  # open-mmlab
        if any(k.startswith("backbone.") for k in sd):
            sd = OrderedDict((k[len("backbone."):], v) for k, v in sd.items() if k.startswith("backbone."))
        sd = OrderedDict((k, v) for k, v in sd.items() if not k.startswith("fc."))
        has_deep = any(k.startswith("stem.") for k in sd)
        has_plain = "conv1.weight" in sd
        if not (has_deep or has_plain):
            raise ValueError(f"backbone.pretrained={path!r}: not a ResNet checkpoint (no 'conv1.weight' or 'stem.*' keys)")
        if has_deep != self.deep_stem:
            raise ValueError(
                f"backbone.pretrained={path!r} has a {'deep (V1c)' if has_deep else 'plain 7x7'} stem but "
                f"backbone.deep_stem={self.deep_stem}; set backbone.deep_stem={has_deep}"
            )
        result = self.load_state_dict(sd, strict=False)
        # Block attention modules are new (they start as their paper documents); anything else missing is an error.
        missing = [k for k in result.missing_keys if ".attention." not in k]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"backbone.pretrained={path!r} does not fit ResNet-{self.depth}: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
            )
        return {"missing": result.missing_keys, "unexpected": result.unexpected_keys}
