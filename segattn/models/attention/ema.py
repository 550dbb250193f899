"""Expectation-maximisation attention (Li et al., "Expectation-Maximization Attention Networks
for Semantic Segmentation", ICCV 2019)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int
from .record import Recorder
from .registry import register


@register("ema")
class EMAttention(Recorder, nn.Module):
    """The official ``EMAU``: conv1x1 -> EM attention -> ReLU -> conv1x1 + BN -> + input -> ReLU.

    The EM attention keeps K bases mu (a (1, C, K) buffer, initialised N(0, 2/K) and
    L2-normalised over C). For ``stages`` = T steps on the flattened map X (C x N):
      E: Z = softmax over the K bases of X^T mu                        (N x K responsibilities)
      M: mu = X Z / sum_n Z, then L2-normalised over C.
    The map is reconstructed as X~ = mu Z^T with the last Z and mu. The official code runs the
    EM steps under ``torch.no_grad()``, and the reconstruction uses only their results, so no
    gradient flows through the attention and the first conv1x1, which only feeds it, never
    receives one. It is frozen explicitly (``requires_grad=False``, as mmsegmentation does); it
    maps the non-negative input to (-inf, inf) so the bases can point anywhere.

    Normalisations as mmsegmentation's ``EMAModule`` (the code behind the recipes' numbers):
    ``F.normalize`` (x / max(||x||, 1e-12)) for the L1 normalisation of Z over the positions and the
    L2 normalisation of the bases, where the authors' code adds 1e-6 to the norm.

    Bases maintenance (the paper's moving average): in training, after the forward, the buffer
    moves towards the batch mean of the final bases: the mean over the batch (and, under
    torch.distributed, over the processes: mmsegmentation's ``reduce_mean``; the authors'
    DataParallel code averages over the whole batch) is L2-normalised, then blended,
    mu0 <- m * mu0 + (1 - m) * mean, with ``momentum`` m = 0.9 (official ``EM_MOM``; mmseg's
    momentum 0.1 weighs the new mean). The blend is not renormalised, as in both codes.

    Initialisation as the official code: convs N(0, sqrt(2 / (k*k*out))), BN weight 1 — not
    zero — so the module does not start as the identity (the residual ReLU(x + ...) is there
    from the start).
    """

    # Survey (Guo et al. 2022): 矩阵乘法 叉乘 通道（特殊）. The weights come from a matrix product (X^T mu) and are
    # applied by one (mu Z^T), but "domain" is spatial here: Z (N x K) holds one distribution per
    # position, each base is a Z-weighted mean over all positions, and X~ = mu Z^T re-expresses every
    # position from them, i.e. the low-rank (K) form of the HW x HW non-local map Z Z^T the paper
    # derives EMA from. The survey's "special channel" refers to the K-dimensional bottleneck
    # ("c 降到 k 再升回 c"), which is the number of bases, not a weighting of feature channels.
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "Expectation-Maximization Attention Networks for Semantic Segmentation (2019)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `EMAHead`, `EMAModule` (eval and the training update); XiaLiPKU/EMANet `EMAU`"
    deviations = "mmseg's normalisations (`F.normalize`) where EMANet adds 1e-6 to the norms (outputs differ by about 1e-7)"

    # The head's facts (segattn.models.heads.registry.head_facts; this mechanism uses the generic head).
    # mmsegmentation 1.x single-scale val mIoU, R50-D8 / R101-D8, Cityscapes 512x1024, 80k iterations
    published = {"r50_d8_cityscapes_80k": 77.59, "r101_d8_cityscapes_80k": 79.10}
    mmseg_params = 16_458_003  # mmseg's EMAHead at the recipe's widths, 19 classes

    def __init__(self, channels: int, num_bases: int = 64, stages: int = 3, momentum: float = 0.9):
        super().__init__()
        num_bases = positive_int(num_bases, "ema: num_bases")
        stages = positive_int(stages, "ema: stages", hint=" (EM iterations)")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"ema: momentum must be in [0, 1] (weight of the old bases), got {momentum!r}")
        self.channels = int(channels)
        self.num_bases = int(num_bases)
        self.stages = int(stages)
        self.momentum = float(momentum)

        bases = torch.empty(1, self.channels, self.num_bases).normal_(0, math.sqrt(2.0 / self.num_bases))
        self.register_buffer("bases", F.normalize(bases, dim=1))

        self.conv1 = nn.Conv2d(self.channels, self.channels, 1)
        self.conv2 = nn.Sequential(
            nn.Conv2d(self.channels, self.channels, 1, bias=False), nn.BatchNorm2d(self.channels)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.conv1.requires_grad_(False)

    @torch.no_grad()
    def em(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the EM steps on ``feats`` (N, C, HW): returns bases mu (N, C, K), responsibilities z (N, HW, K)."""
        mu = self.bases.to(feats.dtype).expand(feats.shape[0], -1, -1)
        for _ in range(self.stages):
            z = torch.bmm(feats.transpose(1, 2), mu).softmax(dim=2)  # E-step
            z_ = F.normalize(z, p=1, dim=1)  # over the positions
            mu = F.normalize(torch.bmm(feats, z_), dim=1)  # M-step
        return mu, z

    @torch.no_grad()
    def update_bases(self, mu: torch.Tensor) -> None:
        """Moving average of the buffer towards the batch (and process) mean of ``mu`` (N, C, K)."""
        mean = mu.mean(dim=0, keepdim=True).to(self.bases.dtype)
        if dist.is_available() and dist.is_initialized():
            mean = mean / dist.get_world_size()
            dist.all_reduce(mean, op=dist.ReduceOp.SUM)
        mean = F.normalize(mean, dim=1)
        self.bases.mul_(self.momentum).add_(mean, alpha=1.0 - self.momentum)

    def responsibilities(self, index: int = 0) -> torch.Tensor:
        """The last E-step's Z as (K, H, W) maps: how much each position belongs to each base."""
        h, w = self.recorded["size"]
        return self.recorded["responsibilities"][index].t().reshape(self.num_bases, h, w)

    def attention_maps(self, y: int, x: int, index: int = 0) -> dict[str, torch.Tensor]:
        """The low-rank non-local map EMA stands for: position u is rebuilt as sum_k z_uk mu_k, and
        base mu_k (before its L2 normalisation) is the Z-weighted mean sum_v z_vk x_v / sum_v z_vk,
        so u gathers from v with weight sum_k z_uk z_vk / sum_v' z_v'k (sums to one over v).
        """
        h, w = self.recorded["size"]
        z = self.recorded["responsibilities"][index].float()  # (HW, K)
        z_norm = z / (1e-6 + z.sum(dim=0, keepdim=True))  # the M-step's normalisation
        return {"attention": (z_norm @ z[y * w + x]).view(h, w)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        feats = self.conv1(x).flatten(2)
        mu, z = self.em(feats)
        if self.recording:
            self.record(responsibilities=z, size=(h, w))
        recon = F.relu(torch.bmm(mu, z.transpose(1, 2)).view(n, c, h, w))
        if self.training:
            self.update_bases(mu)
        return F.relu(x + self.conv2(recon))
