"""The Hamburger (Geng et al., "Is Attention Better Than Matrix Decomposition?", ICLR 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops import positive_int
from ..layers import conv_bn_relu
from .record import Recorder
from .registry import register


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of the (D, N) feature matrix into D x R bases and N x R
    coefficients by multiplicative updates (mmseg's ``NMF2D``; the "ham").

    ``spatial`` is the paper's S (mmseg's ``MD_S``): the C channels are cut into S groups of D = C / S,
    each factorised apart; ``rank`` is R (``MD_R``). In training the bases start random every forward
    (uniform, unit columns: mmseg's ``rand_init``); in evaluation, with ``eval_bases="fixed"`` (the default),
    from one such draw made once, from a generator of its own seeded with 0 (a buffer, not saved), the same
    for every sample: predictions are then deterministic and each image's does not depend on the others of
    its batch, and an exported graph reproduces the model. ``eval_bases="random"`` is mmseg's fresh draw at
    every forward in evaluation too. The coefficients start as softmax(X^T B) (NMF's temperature is 1),
    then ``train_steps`` / ``eval_steps`` updates of both.

    One-step gradient (the paper's Sec. 2.3): the iterations run without autograd and only the last
    coefficient update and the reconstruction B C^T are differentiated. mmseg back-propagates through
    every iteration; the forward is the same either way.
    """

    def __init__(self, channels: int, spatial: int = 1, rank: int = 64, train_steps: int = 6, eval_steps: int = 7,
                 eval_bases: str = "fixed"):
        super().__init__()
        self.spatial = positive_int(spatial, "ham: spatial")
        self.rank = positive_int(rank, "ham: rank")
        self.train_steps = positive_int(train_steps, "ham: train_steps")
        self.eval_steps = positive_int(eval_steps, "ham: eval_steps")
        if eval_bases not in ("fixed", "random"):
            raise ValueError(f"ham: eval_bases must be 'fixed' (deterministic inference) or 'random' (mmseg's draw "
                             f"at every forward), got {eval_bases!r}")
        if channels % self.spatial:
            raise ValueError(f"ham: spatial={self.spatial} must divide the {channels} channels")
        self.eval_bases = eval_bases
        # Its own generator: building the module leaves the global random stream (and so every later layer's
        # start) as it was. Not persistent: checkpoints keep their keys, and the draw is the same every time.
        fixed = torch.rand((self.spatial, channels // self.spatial, self.rank), generator=torch.Generator().manual_seed(0))
        self.register_buffer("fixed_bases", fixed, persistent=False)

    def build_bases(self, batch: int, dim: int, like: torch.Tensor) -> torch.Tensor:
        if not self.training and self.eval_bases == "fixed":
            # (B*S, D, R): sample b, group s at b*S + s; unit columns in the input's precision, as a fresh draw's
            return F.normalize(self.fixed_bases.to(like.dtype), dim=1).repeat(batch, 1, 1)
        # Drawn like mmseg's (torch.rand on the default generator, then moved), so that one seed gives both
        # the same bases.
        bases = torch.rand((batch * self.spatial, dim, self.rank)).to(like.device)
        return F.normalize(bases, dim=1).to(like.dtype)

    @staticmethod
    def update_coef(x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        return coef * torch.bmm(x.transpose(1, 2), bases) / (coef.bmm(bases.transpose(1, 2).bmm(bases)) + 1e-6)

    @staticmethod
    def update_bases(x: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        return bases * torch.bmm(x, coef) / (bases.bmm(coef.transpose(1, 2).bmm(coef)) + 1e-6)

    def factorise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bases (B*S, D, R) and coefficients (B*S, N, R) of the (B*S, D, N) matrices ``x``."""
        bases = self.build_bases(x.shape[0] // self.spatial, x.shape[1], x)
        with torch.no_grad():
            coef = F.softmax(torch.bmm(x.transpose(1, 2), bases), dim=-1)
            for _ in range(self.train_steps if self.training else self.eval_steps):
                coef = self.update_coef(x, bases, coef)
                bases = self.update_bases(x, bases, coef)
        return bases, self.update_coef(x, bases, coef)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        if c % self.spatial:
            raise ValueError(f"ham: spatial={self.spatial} must divide the {c} channels")
        bases, coef = self.factorise(x.reshape(b * self.spatial, c // self.spatial, h * w))
        return torch.bmm(bases, coef.transpose(1, 2)).reshape(b, c, h, w), coef


@register("ham")
class Hamburger(Recorder, nn.Module):
    """mmseg's ``Hamburger``: lower bread, ham, upper bread, residual.

    1x1 conv with bias (``ham_in``), ReLU (NMF needs non-negative input), NMF's low-rank reconstruction,
    1x1 conv + norm (``ham_out``, no activation), out = ReLU(x + that). The norm is BatchNorm, this
    framework's (SyncBN in the recipes); mmseg's SegNeXt configs give the Hamburger GroupNorm(32).
    """

    # The coefficients come from matrix products of the features with the bases (matmul) and the output is
    # the low-rank product B C^T (matmul) over all positions (spatial): EMANet's family.
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    paper = "Is Attention Better Than Matrix Decomposition? (2021)"
    # The code this mechanism and its head are checked against in the tests (README, "reference").
    reference = "mmseg `LightHamHead` (`Hamburger`, `NMF2D`)"
    deviations = ("one-step gradient as the paper and Enjoy-Hamburger (mmseg back-propagates through every NMF "
                  "step); BatchNorm, not SegNeXt's GroupNorm(32); one stage (c5), not SegNeXt's three; in evaluation "
                  "the NMF starts from fixed bases (one draw, seed 0), the same for every image, so that predictions are "
                  "deterministic and independent of the batch (mmseg draws new ones at every forward: "
                  "eval_bases=random)")

    def __init__(self, channels: int, spatial: int = 1, rank: int = 64, train_steps: int = 6, eval_steps: int = 7,
                 eval_bases: str = "fixed"):
        super().__init__()
        self.channels = int(channels)
        self.ham_in = nn.Conv2d(self.channels, self.channels, 1)  # mmcv ConvModule without norm: a bias
        nn.init.kaiming_normal_(self.ham_in.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.ham_in.bias)
        self.ham_in.mmseg_init = True
        self.ham = NMF2D(self.channels, spatial, rank, train_steps, eval_steps, eval_bases)
        self.ham_out = conv_bn_relu(self.channels, self.channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enjoy, coef = self.ham(F.relu(self.ham_in(x)))
        if self.recording:
            h, w = x.shape[-2:]
            self.record(coef=coef.reshape(x.shape[0], -1, h * w, coef.shape[-1]), size=(h, w))
        return F.relu(x + self.ham_out(enjoy))

    def spatial_maps(self, index: int = 0) -> dict[str, torch.Tensor]:
        """The NMF coefficients of each position (first group of channels): their sum (``total``: how much of
        the position the bases explain), then ``base<r>`` for each of the R bases, each (H, W)."""
        h, w = self.recorded["size"]
        coef = self.recorded["coef"][index, 0]  # (HW, R)
        return {"total": coef.sum(1).view(h, w), **{f"base{r}": coef[:, r].view(h, w) for r in range(coef.shape[1])}}
