"""Attention inside the residual blocks: ``backbone.block_attention=<name>`` (SE-ResNet, CBAM-ResNet,
ECA-ResNet, SGE-ResNet, GC-ResNet).

Every one of these papers puts its module at the same place in every residual block: after the
last convolution's BatchNorm, before the sum with the identity branch (``backbone.BasicBlock`` /
``Bottleneck`` do this with the ``block_attention`` callable built here). The modules are the
registered mechanisms of ``segattn.models.attention``, built with their own defaults, which are the
papers' backbone settings (SE/CBAM reduction 16, ECA's adaptive kernel size per block width,
SGE 64 groups, GC ratio 1/4 channel-add; BAM r = 16, d = 4; triplet 7x7 gates; SimAM lambda 1e-4; polarized
self-attention's parallel layout). Shuffle attention is the exception: its default is 8 groups (see
``ShuffleAttention``), SA-ResNet's 64 is ``backbone.block_attention_kwargs.groups=64`` on a ResNet of width 64.
BAM is a gate too, but its paper puts it only at the four stage bottlenecks; here it sits in every block, like
the others.

How each starts (they keep their own initialisation: ``ResNet`` skips its Kaiming init for every
module under ``.attention``), which matters when the plain parts come from torchvision weights:

- ``gc``: the last conv of the transform is zero (official ``reset_parameters``), so at init the
  block adds nothing and computes exactly the plain torchvision block.
- ``sge``: the per-group scale is 0 and the shift 1 (official code), so at init the block's
  residual branch is multiplied by the constant sigmoid(1) ~ 0.73.
- ``shuffle``: scales 0 and shifts 1 (official code): at init every gate is the constant sigmoid(1).
- ``se``, ``eca``, ``cbam``, ``bam``, ``triplet``, ``polarized``: PyTorch's default initialisation, as the official code (none of the
  papers prescribes a special one); the gates start near 0.5 and depend on the input, so the
  residual branch starts at roughly half its torchvision value and fine-tuning adapts it.

``sk`` is refused: SKNet's selective kernel is not a gate after the last BN but a replacement of
the block's 3x3 convolution (SKNet-50 is ResNeXt-50 with each grouped 3x3 conv replaced by an SK
conv). Doing that needs the SK conv to take the block's stride and dilation and different input
and output widths, which the registered module (a ``C -> C`` mechanism for heads) does not, and it
would discard the torchvision weights of every 3x3 conv it replaces. Use ``head=sk`` for SKNet's
mechanism as a head.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

# BLOCK_ATTENTIONS: the gates registered with ``block=True`` (the papers insert them after the last
# BN of every residual block).
from .attention import ATTENTIONS, BLOCK_ATTENTIONS, build_attention

_SK_REFUSAL = (
    "backbone.block_attention='sk' is not supported: SKNet replaces the block's 3x3 convolution by a "
    "selective-kernel conv (with the block's stride and dilation, in ResNeXt's grouped bottleneck) rather "
    "than adding a gate after the last BN, and that would discard the torchvision weights of every 3x3 conv "
    "it replaces; use head=sk for SKNet's mechanism as a head. "
)


def block_attention(name: str, kwargs: dict | None = None,
                    widths: list[int] | None = None) -> Callable[[int], nn.Module]:
    """The ``channels -> nn.Module`` factory for ``backbone.block_attention=name``.

    ``kwargs`` (``backbone.block_attention_kwargs``) go to the module's constructor; ``widths`` are
    the output widths of the residual blocks (``ResNet.channels``), checked up front so that a bad
    setting fails with the config keys to change rather than deep inside the network's construction.
    """
    kwargs = dict(kwargs or {})
    if name == "sk":
        raise ValueError(_SK_REFUSAL + f"Choices for backbone.block_attention: {', '.join(BLOCK_ATTENTIONS)} (or null)")
    if name not in BLOCK_ATTENTIONS:
        why = (f"{name!r} is a registered head mechanism but not a gate the papers insert into residual blocks"
               if name in ATTENTIONS else f"{name!r} is not known")
        raise ValueError(f"backbone.block_attention={name!r}: {why}; choices: {', '.join(BLOCK_ATTENTIONS)} (or null)")
    cls = ATTENTIONS[name]
    try:
        inspect.signature(cls).bind(1, **kwargs)
    except TypeError:
        accepted = [p for p in inspect.signature(cls).parameters if p != "channels"]
        raise ValueError(
            f"backbone.block_attention_kwargs={kwargs} do not fit backbone.block_attention={name!r}; "
            f"it accepts {', '.join(accepted)}"
        ) from None
    if name == "sge" and widths:
        # SGE-ResNet uses the same number of groups (64) in every block. The widths of a ResNet are
        # the first stage's width times powers of two, so a count that divides the first stage
        # divides them all; anything else is a configuration error, not something to round silently.
        groups = int(kwargs.get("groups", inspect.signature(cls).parameters["groups"].default))
        bad = [w for w in widths if w % groups]
        if bad:
            raise ValueError(
                f"backbone.block_attention=sge: groups={groups} does not divide the block widths {bad} "
                f"(this backbone's blocks have {sorted(set(widths))} channels); the paper uses 64 groups in every "
                f"block (backbone.width=64); set backbone.block_attention_kwargs.groups to a divisor of {min(widths)}"
            )

    if name == "shuffle" and widths:
        # SA-ResNet: every block's channels are cut into the same G groups of two halves each.
        groups = int(kwargs.get("groups", inspect.signature(cls).parameters["groups"].default))
        bad = [w for w in widths if w % (2 * groups)]
        if bad:
            raise ValueError(
                f"backbone.block_attention=shuffle: 2 * groups = {2 * groups} does not divide the block widths {bad} "
                f"(this backbone's blocks have {sorted(set(widths))} channels; each group is split in two halves); "
                f"set backbone.block_attention_kwargs.groups to a divisor of {min(widths) // 2}"
            )

    def make(channels: int) -> nn.Module:
        return build_attention(name, channels, **kwargs)

    return make


def block_widths(depth: int, width: int) -> list[int]:
    """Output widths of the residual blocks of every stage: what ``ResNet.channels`` will be."""
    from .backbone import ARCH

    if depth not in ARCH:
        raise ValueError(f"backbone.depth={depth!r}; expected one of {sorted(ARCH)}")
    expansion = 1 if ARCH[depth][0] == "basic" else 4
    return [width * 2**i * expansion for i in range(4)]
