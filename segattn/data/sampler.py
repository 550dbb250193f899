"""The training sampler: an endless, seeded stream of (index, augmentation seed) pairs."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler):
    """Yields ``(index, seed)`` for iterations ``start_iter, start_iter + 1, ...`` forever.

    Epoch ``e`` is a permutation drawn from a generator seeded by ``(seed, e)``; rank ``r`` of
    ``world_size`` takes its own slice of every batch. Because the order and each sample's
    augmentation seed are functions of (seed, iteration), resuming at iteration ``k`` reproduces
    exactly the batches an uninterrupted run would have seen, without loading the skipped ones;
    and one iterator serves the whole run, so DataLoader workers start once.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1):
        if num_samples <= 0:
            raise ValueError("the training split is empty")
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size
        # Whole global batches per epoch; at least one (a dataset smaller than a batch is repeated).
        self.iters_per_epoch = max(1, num_samples // (batch_size * world_size))

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        need = self.iters_per_epoch * self.batch_size * self.world_size
        perms = [torch.randperm(self.n, generator=g) for _ in range(-(-need // self.n))]
        return torch.cat(perms)[:need]

    def __iter__(self):
        it = self.start_iter
        per_iter = self.batch_size * self.world_size
        while True:
            epoch, k = divmod(it, self.iters_per_epoch)
            order = self.epoch_order(epoch)
            for j in range(k, self.iters_per_epoch):
                base = j * per_iter + self.rank * self.batch_size
                for pos in range(base, base + self.batch_size):
                    yield int(order[pos]), (self.seed * 100_003 + epoch) * 1_000_003 + pos
            it = (epoch + 1) * self.iters_per_epoch

    def __len__(self):  # endless; DataLoader only needs a length for its own bookkeeping
        return 2**62
