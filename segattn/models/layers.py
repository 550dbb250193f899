"""The two building blocks every head and mechanism shares, initialised as mmsegmentation does.

mmcv's ``ConvModule`` (conv -> norm -> activation) starts its convolution from Kaiming normal
(fan_out, gain for the activation that follows) with a zero bias, and its norm from weight 1,
bias 0; every mmseg decode head starts its classifier ``conv_seg`` from N(0, 0.01) with a zero
bias. The published recipes were trained from that start, so ours is the same by default.

``model.init=pytorch`` (:func:`apply_init`) gives those convolutions PyTorch's own default start
(Kaiming uniform with a=sqrt(5), uniform bias) instead. Short runs from scratch learn much faster
from it: a classifier starting at N(0, 0.01) produces near-uniform logits whose gradients reach the
layers below scaled by 0.01, and in a few hundred iterations the context heads never learn to read
a far cue (the context benchmark measured non-local at 54.7 mIoU from mmseg's start against 91.2
from PyTorch's). Mechanism-specific starts (DANet's zero gamma, GCNet's zero last conv, ...) belong to
the papers and stay either way.
"""

from __future__ import annotations

import torch.nn as nn

# OCNet normalises with InPlaceABNSync, whose activation is a leaky ReLU of slope 0.01.
LEAKY_SLOPE = 0.01


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, dilation: int = 1, bias: bool = False,
                 act: str | None = "relu", padding: int | None = None) -> nn.Sequential:
    """conv (``kernel``x``kernel``, 'same' padding unless ``padding``) -> BatchNorm -> ``act``
    ('relu', 'leaky' or None)."""
    padding = dilation * (kernel // 2) if padding is None else padding
    conv = nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=bias)
    if act == "leaky":
        nn.init.kaiming_normal_(conv.weight, a=LEAKY_SLOPE, mode="fan_out", nonlinearity="leaky_relu")
    else:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if bias:
        nn.init.zeros_(conv.bias)
    conv.mmseg_init = True  # apply_init(..., "pytorch") resets it
    layers = [conv, nn.BatchNorm2d(cout)]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "leaky":
        layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
    elif act is not None:
        raise ValueError(f"conv_bn_relu: act must be 'relu', 'leaky' or None, got {act!r}")
    return nn.Sequential(*layers)


def classifier(cin: int, num_classes: int) -> nn.Conv2d:
    """The 1x1 classifier of a decode head (mmseg's ``conv_seg``): N(0, 0.01) weights, zero bias."""
    conv = nn.Conv2d(cin, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    conv.mmseg_init = True
    return conv


INITS = ("mmseg", "pytorch")


def apply_init(model: nn.Module, init: str = "mmseg") -> nn.Module:
    """``model.init``: ``mmseg`` keeps the start above; ``pytorch`` resets every convolution that
    :func:`conv_bn_relu` and :func:`classifier` built to PyTorch's default (``reset_parameters``)."""
    if init not in INITS:
        raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {init!r}")
    if init == "pytorch":
        for m in model.modules():
            if getattr(m, "mmseg_init", False):
                m.reset_parameters()
    return model
