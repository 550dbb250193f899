"""mmseg's ``SelfAttentionBlock`` (mmseg/models/utils/self_attention_block.py), the one block that ISANet's
relations, OCRNet's object attention and ANNNet's asymmetric blocks are configured from."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn

from ...ops import fused_attention
from ..layers import conv_bn_relu


def projection(cin: int, cout: int, num_convs: int, norm: bool) -> nn.Module:
    """mmseg's ``build_project``: ``num_convs`` 1x1 conv-BN-ReLU (``norm``) or plain 1x1 convs with bias."""
    if norm:
        convs = [conv_bn_relu(cin if i == 0 else cout, cout, 1) for i in range(num_convs)]
    else:
        convs = [nn.Conv2d(cin if i == 0 else cout, cout, 1) for i in range(num_convs)]
    return convs[0] if num_convs == 1 else nn.Sequential(*convs)


class Attended(NamedTuple):
    context: torch.Tensor  # (N, out_channels, h, w) on the query grid
    weights: torch.Tensor | None  # (N, L, S) softmax over the keys; None from the fused kernel
    query: torch.Tensor  # (N, L, C')
    key: torch.Tensor  # (N, S, C')


class SelfAttentionBlock(nn.Module):
    """Queries from ``query_feats``, keys and values from ``key_feats``: softmax(Q K^T / sqrt(C')) V, then
    the output projection, as mmseg's block with ``matmul_norm=True`` and no query down-sampling.

    Key and query projections are ``key_query_num_convs`` 1x1 conv-BN-ReLU layers to ``channels`` (one
    shared module with ``share_key_query``); the value projection one 1x1 layer, to ``channels`` when
    there is an output projection (``with_out``) and to ``out_channels`` otherwise; value and output
    layers are conv-BN-ReLU with ``value_out_norm``, else plain convolutions with bias, and then, as
    mmseg's ``init_weights``, the output convolution starts at zero. ``key_downsample`` maps the projected
    keys and values (N, C', H', W') to (N, C', S) (ANN's pyramid pooling); without it S = H'W'.
    """

    def __init__(self, key_in: int, query_in: int, channels: int, out_channels: int, share_key_query: bool = False,
                 key_query_num_convs: int = 1, value_out_norm: bool = False, with_out: bool = True,
                 key_downsample: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.key_channels = channels
        self.key_downsample = key_downsample
        # Built query first (mmseg builds the key first): the order only decides the random start.
        self.query_project = projection(query_in, channels, key_query_num_convs, True)
        self.key_project = self.query_project if share_key_query else projection(key_in, channels,
                                                                                 key_query_num_convs, True)
        self.value_project = projection(key_in, channels if with_out else out_channels, 1, value_out_norm)
        self.out_project = projection(channels, out_channels, 1, value_out_norm) if with_out else None
        if self.out_project is not None and not value_out_norm:
            nn.init.zeros_(self.out_project.weight)
            nn.init.zeros_(self.out_project.bias)

    def embeddings(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (N, L, C') and keys (N, S, C')."""
        query = self.query_project(query_feats).flatten(2).transpose(1, 2)
        key = self.key_project(key_feats)
        key = self.key_downsample(key) if self.key_downsample is not None else key.flatten(2)
        return query, key.transpose(1, 2)

    def attend(self, query_feats: torch.Tensor, key_feats: torch.Tensor, impl: str = "explicit") -> Attended:
        """The context on the query grid, with what a recording keeps. ``impl="fused"`` runs
        ``fused_attention`` (no L x S map); ``explicit`` computes the softmax weights."""
        n, _, h, w = query_feats.shape
        query, key = self.embeddings(query_feats, key_feats)
        value = self.value_project(key_feats)
        value = (self.key_downsample(value) if self.key_downsample is not None else value.flatten(2)).transpose(1, 2)
        scale = self.key_channels ** -0.5
        weights = None
        if impl == "explicit":
            weights = (torch.matmul(query, key.transpose(1, 2)) * scale).softmax(dim=-1)
            context = torch.matmul(weights, value)
        else:
            context = fused_attention(query, key, value, scale)
        context = context.transpose(1, 2).reshape(n, -1, h, w)
        if self.out_project is not None:
            context = self.out_project(context)
        return Attended(context, weights, query, key)

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        return self.attend(query_feats, key_feats).context
