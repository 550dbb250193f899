"""The two building blocks every head and mechanism shares, initialised as mmsegmentation does.

mmcv's ``ConvModule`` (conv -> norm -> activation) starts its convolution from Kaiming normal
(fan_out, gain for the activation that follows) with a zero bias, and its norm from weight 1,
bias 0; every mmseg decode head starts its classifier ``conv_seg`` from N(0, 0.01) with a zero
bias. The published recipes were trained from that start, so ours is the same.
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
    return conv
