"""Selective Kernel convolution (Li et al., "Selective Kernel Networks", CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import positive_int
from .record import Recorder
from .registry import register


@register("sk")
class SelectiveKernel(Recorder, nn.Module):
    """SKNet's ``SKConv``: Split (M kernels) -> Fuse (sum, GAP, fc) -> Select (softmax over branches).

    Defaults are the paper's SKNet-50 setting (Sec. 3.1, Table 1): M=2 branches, G=32 groups,
    r=16, L=32, and the 5x5 branch replaced by a 3x3 conv with dilation 2 "for further
    efficiency". Branch m is a 3x3 conv of dilation m+1, each with BN and ReLU.

    ``groups`` is G; left at None it is 32 when 32 divides the channels and 1 otherwise, so the
    module also fits narrow layers (e.g. C=16 inside a ResNet-18 block). The soft attention is a
    softmax across the M branches (Eq. 5), so a_c + b_c = 1 for every channel c.
    """

    # Survey (Guo et al. 2022): 全连接 点乘 通道域 ("a b的比例系数相加为1"): the branch weights come from fc layers and
    # scale each branch channel-wise.
    taxonomy = dict(weights="mlp", applied="elementwise", domain="channel")
    paper = "Selective Kernel Networks (2019)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "implus/SKNet `sknet50.prototxt`"
    deviations = "BN momentum PyTorch's 0.1 (the Caffe model averages with 0.95)"

    def __init__(
        self,
        channels: int,
        branches: int = 2,
        groups: int | None = None,
        reduction: int = 16,
        min_dim: int = 32,
    ):
        super().__init__()
        channels = int(channels)
        if int(branches) < 2:
            raise ValueError(f"sk: branches (the paper's M) must be >= 2 to select between kernels, got {branches}")
        reduction, min_dim = positive_int(reduction, "sk: reduction"), positive_int(min_dim, "sk: min_dim")
        if groups is None:
            groups = 32 if channels % 32 == 0 else 1
        if int(groups) < 1 or channels % int(groups):
            raise ValueError(f"sk: groups={groups} must be a positive divisor of channels={channels}")
        self.channels = channels
        self.branches = int(branches)
        self.groups = int(groups)
        # The paper's d = max(C/r, L) (Eq. 4): L keeps the fuse layer from collapsing on narrow layers.
        self.dim = max(channels // int(reduction), int(min_dim))

        self.convs = nn.ModuleList()
        for m in range(self.branches):
            dilation = m + 1
            self.convs.append(
                nn.Sequential(
                    nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=self.groups, bias=False),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                )
            )
        # z = ReLU(BN(W s)) (Eq. 4), as 1x1 convs on the pooled vector.
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, self.dim, 1, bias=False),
            nn.BatchNorm2d(self.dim),
            nn.ReLU(inplace=True),
        )
        # One fc per branch (A, B, ... in Eq. 5), computed by a single conv with M*C outputs, without
        # a bias as in the authors' code and timm's SelectiveKernelAttn (Eq. 5 has none either).
        self.select = nn.Conv2d(self.dim, self.branches * channels, 1, bias=False)

    def branch_weights(self, feats: torch.Tensor) -> torch.Tensor:
        """Softmax attention over branches, shape (N, M, C, 1, 1), from the stacked branch outputs (N, M, C, H, W)."""
        n = feats.shape[0]
        s = feats.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        logits = self.select(self.fuse(s)).view(n, self.branches, self.channels, 1, 1)
        return logits.softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            # PyTorch would say "Expected more than 1 value per channel": BN of one pooled vector.
            raise ValueError(
                "sk: SKNet's fuse layer applies BatchNorm to the pooled (N, C, 1, 1) vector, which needs at least "
                f"2 images per process in training, got {x.shape[0]}; set trainer.batch_size to 2 or more")
        feats = torch.stack([conv(x) for conv in self.convs], dim=1)
        weights = self.branch_weights(feats)
        if self.recording:
            self.record(branch_weights=weights.flatten(2))
        return (weights * feats).sum(dim=1)

    def gate_values(self) -> dict[str, torch.Tensor]:
        """Each branch's (N, C) weights (branch m: 3x3 conv of dilation m + 1); they sum to one."""
        w = self.recorded["branch_weights"]
        return {f"branch{m}": w[:, m] for m in range(self.branches)}
