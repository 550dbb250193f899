"""Context encoding (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int
from ..layers import conv_bn_relu
from .record import Recorder
from .registry import register


class Encoding(nn.Module):
    """The encoding layer (Sec. 3.1): K learned codewords d_k and smoothing factors s_k.

    Each position's residuals r_ik = x_i - d_k are weighed by the soft assignment
    a_ik = softmax_k(s_k ||r_ik||^2) and summed over the positions: e_k = sum_i a_ik r_ik, a (K, C)
    encoding per image. mmseg's ``Encoding`` expands x to (N, HW, K, C) for both sums; the same
    numbers come from matrix products (||x - d||^2 = ||x||^2 - 2 x.d + ||d||^2 and
    sum_i a_ik (x_i - d_k) = (A^T X)_k - (sum_i a_ik) d_k), which never hold that K-fold copy of the
    features (8 GiB for a 512-channel 97x97 map in float32 at K = 32).
    """

    def __init__(self, channels: int, num_codes: int):
        super().__init__()
        self.channels, self.num_codes = int(channels), int(num_codes)
        # mmseg's start: codewords U(-1/sqrt(KC), 1/sqrt(KC)), smoothing factors U(-1, 0) (negative:
        # a nearer codeword gets the larger weight).
        std = 1.0 / (self.num_codes * self.channels) ** 0.5
        self.codewords = nn.Parameter(torch.empty(self.num_codes, self.channels).uniform_(-std, std))
        self.scale = nn.Parameter(torch.empty(self.num_codes).uniform_(-1, 0))

    def assignments(self, x: torch.Tensor) -> torch.Tensor:
        """(N, HW, K) soft assignments of the (N, HW, C) positions ``x`` to the codewords."""
        d = self.codewords
        dist = (x * x).sum(-1, keepdim=True) - 2 * x @ d.t() + (d * d).sum(-1)
        return F.softmax(self.scale * dist, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        a = self.assignments(x)
        return a.transpose(1, 2) @ x - a.sum(1).unsqueeze(2) * self.codewords  # (N, K, C)


@register("enc")
class ContextEncoding(Recorder, nn.Module):
    """EncNet's context encoding module (mmseg ``EncModule``): a channel gate from the encoded context.

    1x1 conv-BN-ReLU (``encoding_project``), the encoding layer, BatchNorm over the K codewords and
    ReLU, the mean over the codewords (the encoded context e, C values per image), then
    gamma = sigmoid(FC(e)) and out = ReLU(x + x * gamma). The head reads e as well
    (:meth:`encode`): the semantic-encoding loss predicts from it which classes the image holds.
    """

    # Survey (Guo et al. 2022) lists EncNet with the channel attentions: the encoding layer pools the features
    # into codeword residuals (pool), a fully connected layer turns them into gates (mlp), which multiply
    # the channels (elementwise, channel).
    taxonomy = dict(weights="pool+mlp", applied="elementwise", domain="channel")
    paper = "Context Encoding for Semantic Segmentation (2018)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `EncHead` (`EncModule`, `Encoding`)"
    deviations = ("the encoding layer's two sums as matrix products (the same function without mmseg's "
                  "(N, HW, K, C) copy of the features)")

    def __init__(self, channels: int, num_codes: int = 32):
        super().__init__()
        self.channels = int(channels)
        self.num_codes = positive_int(num_codes, "enc: num_codes")
        self.encoding_project = conv_bn_relu(self.channels, self.channels, 1)
        self.encoding = Encoding(self.channels, self.num_codes)
        self.encoding_norm = nn.BatchNorm1d(self.num_codes)  # mmseg turns the head's BN into BN1d here
        self.fc = nn.Linear(self.channels, self.channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoded context e (N, C) and the output ReLU(x + x * sigmoid(FC(e)))."""
        encoded = F.relu(self.encoding_norm(self.encoding(self.encoding_project(x)))).mean(dim=1)
        gamma = torch.sigmoid(self.fc(encoded))
        if self.recording:
            self.record(gate=gamma, size=tuple(x.shape[-2:]))
        return encoded, F.relu(x + x * gamma[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[1]

    def gate_values(self) -> dict[str, torch.Tensor]:
        """gamma, the channel gate from the encoded context (N, C), in (0, 1) (it scales x by 1 + gamma)."""
        return {"channel": self.recorded["gate"]}
