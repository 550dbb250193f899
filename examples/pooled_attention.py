"""A segattn plugin: an attention mechanism of one's own, measured without touching the package.

Pooled non-local attention: every position queries the features average-pooled to a small grid
(``pool_size`` x ``pool_size`` cells), so the weights cost HW x P^2 instead of the non-local block's
HW x HW, and the result comes back through a residual whose scale starts at zero (as DANet's gamma):

    y = x + gamma * W_out softmax(q k^T / sqrt(C')) v,   q = W_q x,  k = W_k pool(x),  v = W_v pool(x)

Use it (README, "Bring your own head"):

    python train.py plugins=[examples/pooled_attention.py] head=custom head.name=pooled_nl +head.pool_size=6
    python -m segattn.check plugins=[examples/pooled_attention.py] head=custom head.name=pooled_nl
    python eval.py checkpoint=outputs/.../best.pt plugins=[examples/pooled_attention.py]
    python benchmarks/context.py --plugins examples/pooled_attention.py --heads pooled_nl --quick

Everything segattn needs is the decorator and the ``(N, C, H, W) -> (N, C, H, W)`` contract; the class
attributes below are optional facts, shown where given (the survey's taxonomy in the context suite's
report; ``grad_exempt`` for the head checker).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import segattn


@segattn.register_attention("pooled_nl")
class PooledNonLocal(nn.Module):
    # Guo et al., "Attention Mechanisms in Computer Vision: A Survey" (2022): weights from a matrix product,
    # applied by a matrix product, over space.
    taxonomy = dict(weights="matmul", applied="matmul", domain="spatial")
    # The key's bias adds q.b to every logit of a query's softmax over the pooled cells, and softmax ignores a
    # constant shift: it cannot learn, by construction (python -m segattn.check would flag it otherwise).
    grad_exempt = {"key.bias": "adds the same amount to every logit of a query's softmax over positions"}

    def __init__(self, channels: int, reduction: int = 2, pool_size: int = 4):
        super().__init__()
        if pool_size < 1:
            raise ValueError(f"pooled_nl: pool_size must be >= 1, got {pool_size}")
        inner = max(1, channels // reduction)
        self.pool_size = int(pool_size)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))  # the block starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        pooled = F.adaptive_avg_pool2d(x, self.pool_size)
        q = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        k = self.key(pooled).flatten(2)  # (N, C', P^2)
        v = self.value(pooled).flatten(2).transpose(1, 2)  # (N, P^2, C')
        weights = torch.softmax(q @ k / k.shape[1] ** 0.5, dim=-1)  # (N, HW, P^2)
        context = (weights @ v).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.gamma * self.out(context)
