"""Decode heads: the FCN baseline, a generic attention head, and the mechanisms' special heads.

Every head takes the backbone's four stage outputs ``[c2, c3, c4, c5]`` and returns logits at the
resolution of the stage it reads, either as a tensor or as a dict ``{"out": ..., <extra>: ...}``
whose extra entries are trained with the head's ``loss_weights``.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from .attention import ATTENTIONS, HEADS, build_attention
from .layers import classifier, conv_bn_relu

HEAD_KEYS = ("name", "channels", "dropout", "concat_input")


class FCNHead(nn.Module):
    """Fully Convolutional Networks for Semantic Segmentation (2015), as mmseg's FCNHead.

    ``num_convs`` 3x3 conv-BN-ReLU layers on stage ``in_index``; with ``concat_input`` the input is
    concatenated with their output and fused by one more 3x3 conv; dropout; 1x1 classifier.
    """

    loss_weights = {"out": 1.0}

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, num_convs: int = 2,
                 concat_input: bool = True, dropout: float = 0.1, in_index: int = -1):
        super().__init__()
        self.in_index = in_index
        layers = [conv_bn_relu(in_channels if i == 0 else channels, channels) for i in range(num_convs)]
        self.convs = nn.Sequential(*layers) if layers else nn.Identity()
        self.conv_cat = conv_bn_relu(in_channels + channels, channels) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.cls = classifier(channels if num_convs or concat_input else in_channels, num_classes)

    def forward(self, feats):
        x = feats[self.in_index]
        y = self.convs(x)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], 1))
        return self.cls(self.dropout(y))


class AttentionHead(nn.Module):
    """reduce (3x3) -> attention mechanism -> project (3x3) [-> concat input, fuse] -> classifier.

    The shape of mmseg's NLHead / CCHead / GCHead / EMAHead: the mechanism works on
    ``attention_channels`` features (default ``channels``), the convolutions around it belong to
    the head, not to the mechanism. mmseg's EMAHead is the one recipe where the two widths differ
    (``ema_channels=512`` for the EM unit, ``channels=256`` from the 3x3 bottleneck on).
    """

    loss_weights = {"out": 1.0}

    def __init__(self, in_channels: int, num_classes: int, attention: str, channels: int = 512,
                 dropout: float = 0.1, concat_input: bool = True, attention_channels: int | None = None,
                 **attention_kwargs):
        super().__init__()
        width = int(attention_channels or channels)
        self.reduce = conv_bn_relu(in_channels, width)
        self.attention = build_attention(attention, width, **attention_kwargs)
        self.project = conv_bn_relu(width, channels)
        self.conv_cat = conv_bn_relu(in_channels + channels, channels) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.cls = classifier(channels, num_classes)

    def forward(self, feats):
        x = feats[-1]
        y = self.project(self.attention(self.reduce(x)))
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], 1))
        return self.cls(self.dropout(y))


def head_options(name: str) -> set[str]:
    """The keys a ``head`` config node may hold for head ``name`` (besides ``name``)."""
    head = FCNHead if name == "fcn" else HEADS.get(name, AttentionHead)
    params = list(inspect.signature(head).parameters.values())
    if any(p.kind == p.VAR_KEYWORD for p in params):  # the rest goes to the mechanism's constructor
        params += list(inspect.signature(ATTENTIONS[name]).parameters.values())
    keys = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return keys - {"self", "in_channels", "num_classes", "attention", "in_index", "fuse"}


def build_head(cfg: dict, in_channels: list[int], num_classes: int) -> nn.Module:
    """Build ``cfg["name"]`` (``fcn`` or any registered attention) on stages with ``in_channels``.

    A mechanism registered with a head of its own (``register(name, head=...)``: DANet, PSANet,
    OCNet, SANet) gets it; the others get :class:`AttentionHead`. Keys that belong to no option of
    the head are refused up front, naming the head they do belong to: that is what ``head.name=cc``
    (instead of the config group ``head=cc``) leaves behind.
    """
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name != "fcn" and name not in ATTENTIONS:
        raise ValueError(f"head.name={name!r} is not a known head; choices: fcn, {', '.join(sorted(ATTENTIONS))}")
    unknown = sorted(set(cfg) - head_options(name))
    if unknown:
        owners = [h for h in ["fcn", *sorted(ATTENTIONS)] if h != name and set(unknown) <= head_options(h)]
        whose = f" (options of head={owners[0]})" if owners else ""
        raise ValueError(
            f"head.name={name!r} does not take head.{', head.'.join(unknown)}{whose}. To switch heads, choose the "
            f"config group: head={name}, not head.name={name} (the group loads conf/head/{name}.yaml); "
            f"head {name!r} accepts: {', '.join(sorted(head_options(name)))}")
    if name == "fcn":
        return FCNHead(in_channels[-1], num_classes, **cfg)
    if name in HEADS:
        return HEADS[name](list(in_channels), num_classes, **cfg)
    return AttentionHead(in_channels[-1], num_classes, name, **cfg)
