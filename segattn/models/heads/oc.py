"""OCNet's head (Yuan & Wang, "OCNet: Object Context Network for Scene Parsing", 2018)."""

from __future__ import annotations

import torch

from ..attention import BN_REMOVES, build_attention
from ..attention.oc import _check_dropout
from ..layers import conv_bn_relu
from .base import BaseDecodeHead
from .registry import register_head


@register_head("oc", "oc_pyramid", "oc_asp")
class OCHead(BaseDecodeHead):
    """OCNet's head (``network/resnet101_{base,pyramid,asp}_oc.py``): conv3x3 (with bias) 2048 ->
    ``channels`` + InPlaceABNSync, the OC module, the 1x1 classifier. The Pyramid-OC network is the
    exception for the first normalisation: its ``layer5`` is conv3x3 + ``BatchNorm2d(512)``, which that
    file defines as ``partial(InPlaceABNSync, activation='none')``, so BN without the leaky ReLU (the
    base and ASP networks write ``InPlaceABNSync(512)``, leaky ReLU included). Nothing else: the module's own
    fusion ends with its dropout, so ``dropout`` before the classifier is 0 by default (OCNet has
    none). ``attention`` names the module: ``oc``, ``oc_pyramid`` or ``oc_asp``.
    """

    def __init__(self, in_channels: list[int], num_classes: int, attention: str = "oc", channels: int = 512,
                 dropout: float = 0.0, concat_input: bool = False, **module_kwargs):
        super().__init__()
        if concat_input:
            raise ValueError(f"{attention} head: concat_input must be false (OCNet classifies the OC output directly)")
        act = None if attention == "oc_pyramid" else "leaky"  # see the docstring
        self.reduce = conv_bn_relu(int(in_channels[self.in_index]), channels, 3, bias=True, act=act)
        # The conv's bias meets its BN; without the activation, the BN's shift meets the module's BNs (check.py).
        self.grad_exempt = {"reduce.0.bias": BN_REMOVES, **({"reduce.1.bias": BN_REMOVES} if act is None else {})}
        self.attention = build_attention(attention, channels, **module_kwargs)
        self.build_classifier(channels, num_classes, _check_dropout(f"{attention} head", "dropout", dropout))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.attention(self.reduce(self.inputs(feats))))
