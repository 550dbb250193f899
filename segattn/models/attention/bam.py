"""BAM (Park et al., "BAM: Bottleneck Attention Module", BMVC 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import positive_int
from .record import Recorder
from .registry import BN_REMOVES, register

COMBINES = ("sum", "product")


@register("bam", block=True)
class BAM(Recorder, nn.Module):
    """The authors' ``BAM`` (Jongchan/attention-module): F' = F * (1 + sigmoid(M_c(F) + M_s(F))).

    Channel branch M_c: global average pooling, FC to C / r, BatchNorm1d, ReLU (``num_layers`` times), FC
    back to C. Spatial branch M_s: 1x1 conv to C / r, BN, ReLU, ``dilation_conv_num`` 3x3 convs of
    dilation d, each with BN and ReLU, 1x1 conv to one map. r = 16 and d = 4 (Sec. 3); biases everywhere;
    PyTorch's default initialisation, as that code.

    Two differences from the authors' code, both to the paper: its pooling ``avg_pool2d(x, H)`` is
    square, so on a map wider than tall it averages the leftmost H x H window only (or, from 2H wide on,
    feeds its FC too many values and fails) and on a taller map fails, where the paper's pooling is
    global; and it combines the branches as sigmoid(M_c * M_s), where the paper's Eq. 2 sums
    them (as External-Attention-pytorch's ``BAMBlock`` does). ``combine="product"`` gives the authors'
    combination.
    """

    # Survey (Guo et al. 2022) lists BAM with the channel & spatial attentions, like CBAM: an MLP on the pooled
    # channels and dilated convolutions for the spatial map (mlp+conv), multiplying the features (elementwise).
    taxonomy = dict(weights="mlp+conv", applied="elementwise", domain="channel+spatial")
    paper = "BAM: Bottleneck Attention Module (2018)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "Jongchan/attention-module `BAM` (MODELS/bam.py)"
    deviations = ("global average pooling (the authors' pools H x H windows: wrong or failing on non-square maps); the "
                  "branches summed as the paper's Eq. 2 (the authors' code multiplies them: combine=product)")

    def __init__(self, channels: int, reduction: int = 16, num_layers: int = 1, dilation_conv_num: int = 2,
                 dilation: int = 4, combine: str = "sum"):
        super().__init__()
        reduction = positive_int(reduction, "bam: reduction")
        self.channels = int(channels)
        hidden = self.channels // reduction
        if hidden < 1:
            raise ValueError(f"bam: reduction={reduction} leaves no hidden unit for channels={self.channels} "
                             f"(C // r = 0); set reduction to at most {self.channels}")
        if combine not in COMBINES:
            raise ValueError(f"bam: combine must be one of {COMBINES}, got {combine!r}")
        self.combine = combine
        num_layers = positive_int(num_layers, "bam: num_layers")
        dilation = positive_int(dilation, "bam: dilation")
        widths = [self.channels] + [hidden] * num_layers
        layers = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]
        self.channel_gate = nn.Sequential(*layers, nn.Linear(hidden, self.channels))
        layers = [nn.Conv2d(self.channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU()]
        for _ in range(positive_int(dilation_conv_num, "bam: dilation_conv_num")):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(hidden),
                       nn.ReLU()]
        self.spatial_gate = nn.Sequential(*layers, nn.Conv2d(hidden, 1, 1))
        # Each hidden layer's bias meets a BatchNorm next (segattn/check.py).
        self.grad_exempt = {f"{gate}.{i}.bias": BN_REMOVES for gate in ("channel_gate", "spatial_gate")
                            for i, m in enumerate(getattr(self, gate)[:-1]) if isinstance(m, (nn.Linear, nn.Conv2d))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = self.channel_gate(x.mean(dim=(2, 3)))[:, :, None, None]  # (N, C, 1, 1) logits
        spatial = self.spatial_gate(x)  # (N, 1, H, W) logits
        att = torch.sigmoid(channel + spatial if self.combine == "sum" else channel * spatial)
        if self.recording:
            self.record(gate=att.mean(1), channel=torch.sigmoid(channel.flatten(1)),
                        spatial=torch.sigmoid(spatial[:, 0]), size=tuple(x.shape[-2:]))
        return (1 + att) * x

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The attention M(F) averaged over the channels (``gate``), and sigmoid(M_s) alone (``spatial``), (H, W)."""
        return {"gate": self.recorded["gate"][index], "spatial": self.recorded["spatial"][index]}

    def gate_values(self) -> dict[str, torch.Tensor]:
        """sigmoid(M_c), the channel branch alone (N, C)."""
        return {"channel": self.recorded["channel"]}
