"""One-decorator registry for attention mechanisms (timm's ``@register_model`` shape).

Every mechanism is an ``nn.Module`` mapping ``(N, C, H, W) -> (N, C, H, W)`` and carries the
taxonomy of Guo et al., "Attention Mechanisms in Computer Vision: A Survey" (2022): how its
weights are computed and how they are applied.
"""

from __future__ import annotations

import functools

import torch.nn as nn

from ...ops import positive_int

ATTENTIONS: dict[str, type[nn.Module]] = {}
# The gates that the papers insert after the last BN of every residual block (SE-ResNet style).
BLOCK_ATTENTIONS: list[str] = []

# The survey's words, in English. "weights": how the attention weights are computed
# (矩阵乘法 matrix product, 全连接 MLP, 卷积 convolution, 池化 pooling). "applied": how they are
# applied to the features (点乘 element-wise, 叉乘 matrix product, 加 addition). "domain": where
# they act (空间域 space, 通道域 channels, 全部 all positions). A mechanism that mixes several
# joins them with "+", e.g. "spatial+channel".
TAXONOMY_WORDS = {
    "weights": {"matmul", "mlp", "conv", "pool"},
    "applied": {"elementwise", "matmul", "add"},
    "domain": {"spatial", "channel", "all"},
}


# Why a parameter gets no gradient by construction: the reasons a module may give in its ``grad_exempt``
# declaration (``{"<parameter name>": reason}``; segattn/check.py exempts exactly what is declared).
SOFTMAX_SHIFT = ("adds the same amount to every logit of a query's softmax over positions, and softmax ignores a "
                 "constant shift")
BN_REMOVES = "adds a per-channel constant that the BatchNorm after it removes in training"
VALUE_CONSTANT = ("the softmax weights sum to one, so a value bias adds a per-channel constant, which the next "
                  "BatchNorm removes in training")


def check_taxonomy(name: str, taxonomy: dict) -> None:
    """Raise ValueError unless ``taxonomy`` uses exactly the survey's keys and words."""
    if set(taxonomy) != set(TAXONOMY_WORDS):
        raise ValueError(
            f"attention {name!r}: taxonomy must have keys {sorted(TAXONOMY_WORDS)}, got {sorted(taxonomy)}"
        )
    for key, allowed in TAXONOMY_WORDS.items():
        words = str(taxonomy[key]).split("+")
        bad = [w for w in words if w not in allowed]
        if bad:
            raise ValueError(
                f"attention {name!r}: taxonomy[{key!r}]={taxonomy[key]!r} uses {bad}; "
                f"expected words from {sorted(allowed)} joined by '+'"
            )


def register(name: str, block: bool = False):
    """Class decorator: ``@register("cc")`` makes the class buildable as ``build_attention("cc", C)``.

    ``block``: the mechanism can also sit inside every residual block (``backbone.block_attention``).
    Every registered constructor takes ``channels`` first; it is checked here, once for all.

    The package's own mechanisms must declare ``taxonomy`` and ``paper``; for a plugin's (a class defined
    outside ``segattn``, registered as ``segattn.register_attention``) they are optional, and checked
    when given.
    """

    def deco(cls):
        if name in ATTENTIONS:
            raise ValueError(f"attention {name!r} is registered twice ({ATTENTIONS[name].__name__}, {cls.__name__})")
        builtin = cls.__module__.split(".")[0] == "segattn"
        for attr in ("taxonomy", "paper"):
            if builtin and not hasattr(cls, attr):
                raise TypeError(f"attention {name!r} ({cls.__name__}) must define class attribute {attr!r}")
        if getattr(cls, "taxonomy", None) is not None:
            check_taxonomy(name, cls.taxonomy)
        init = cls.__init__

        @functools.wraps(init)
        def checked_init(self, channels, *args, **kwargs):
            init(self, positive_int(channels, f"{name}: channels"), *args, **kwargs)

        cls.__init__ = checked_init
        cls.name = name
        ATTENTIONS[name] = cls
        if block:
            BLOCK_ATTENTIONS.append(name)
        return cls

    return deco


def build_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the registered mechanism ``name`` for ``channels`` input channels."""
    if name not in ATTENTIONS:
        raise KeyError(f"unknown attention {name!r}; choices: {', '.join(sorted(ATTENTIONS))}")
    return ATTENTIONS[name](channels, **kwargs)
