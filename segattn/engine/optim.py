"""Optimizers (SGD, AdamW) and learning-rate schedules (poly, cosine) over ``max_iters``."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """With ``no_decay_norm_bias`` the biases and norm parameters get no weight decay (they do not overfit
    the way conv weights do, and decaying a BN scale towards 0 fights the normalisation)."""
    if not no_decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if isinstance(module, NORMS) or name.endswith("bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.01, weight_decay: float = 5e-4,
                    momentum: float = 0.9, betas=(0.9, 0.999), no_decay_norm_bias: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay, no_decay_norm_bias)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    raise ValueError(f"optimizer.name={name!r} is not known; choices: sgd, adamw")


def lr_factor(it: int, max_iters: int, name: str = "poly", power: float = 0.9, min_lr_ratio: float = 0.0,
              warmup_iters: int = 0, warmup_ratio: float = 1e-6) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based).

    poly: (1 - it/max_iters)^power, floored at ``min_lr_ratio`` the mmseg way (lr falls to min_lr,
    not to 0); cosine: half a cosine from 1 to ``min_lr_ratio``. A linear warm-up from
    ``warmup_ratio`` over the first ``warmup_iters`` iterations multiplies either.
    """
    progress = min(it, max_iters) / max(1, max_iters)
    if name == "poly":
        f = (1 - min_lr_ratio) * (1 - progress) ** power + min_lr_ratio
    elif name == "cosine":
        f = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"scheduler.name={name!r} is not known; choices: poly, cosine")
    if warmup_iters and it < warmup_iters:
        f *= warmup_ratio + (1 - warmup_ratio) * it / warmup_iters
    return f


def build_scheduler(optimizer, max_iters: int, name: str = "poly", power: float = 0.9, min_lr: float = 0.0,
                    warmup_iters: int = 0, warmup_ratio: float = 1e-6) -> torch.optim.lr_scheduler.LambdaLR:
    base = optimizer.param_groups[0]["lr"]
    ratio = min_lr / base if base > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, max_iters, name, power, ratio, warmup_iters, warmup_ratio))
