"""The base decode head: what every head shares, after mmseg's ``BaseDecodeHead`` (not its size).

A head reads some of the backbone's stage outputs ``[c2, c3, c4, c5]`` (``in_index``: one index or
a tuple of them), ends in dropout and a 1x1 classifier (``classify``), and says how its outputs are
weighted in the loss (``loss_weights``: ``out`` and any extra outputs it returns in a dict).

It also declares the head's facts, read by the recipes, the export checks, the benchmarks and the
README table, so that they are written once, on the head (see ``segattn.models.heads.registry``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import classifier


class BaseDecodeHead(nn.Module):
    """Stages read, dropout + classifier, loss weights and the head's facts.

    Subclasses build their layers and call :meth:`build_classifier` where the classifier belongs in
    their construction order (last, in every head here: the random start of each layer then depends
    only on the layers before it, as in mmseg).
    """

    loss_weights = {"out": 1.0}
    in_index: int | tuple[int, ...] = -1

    # The head's facts (``registry.head_facts``); None: not declared here. A registered mechanism that
    # uses the generic ``AttentionHead`` declares the same attributes on its own class.
    paper: str | None = None
    reference: str | None = None  # the code the head is checked against in the tests
    deviations: str | None = None  # deliberate differences from that code
    # mmsegmentation 1.x single-scale val mIoU per recipe setting (``r50_d8_cityscapes_80k``, ...)
    published: dict[str, float] | None = None
    # config nodes a recipe setting adds for this head, e.g. ``{"r50_d8_ade20k_160k": {"head": {...}}}``
    recipe_extras: dict[str, dict] | None = None
    # mmseg's decode-head parameter count at the recipe's widths for 19 classes
    mmseg_params: int | None = None
    # export format -> why the head only exports at a fixed size / does not export at all
    export_static_only: dict[str, str] | None = None
    export_unsupported: dict[str, str] | None = None

    def build_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        """Dropout2d(``dropout``) and the 1x1 classifier (mmseg's ``conv_seg``, N(0, 0.01))."""
        self.dropout = nn.Dropout2d(dropout)
        self.cls = classifier(channels, num_classes)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.dropout(x))

    @staticmethod
    def inner_width(head: str, channels: int, kwargs: dict) -> None:
        """PSANet's and APCNet's heads reduce c5 to ``head.channels`` inside the mechanism: its own width
        key ``inner_channels`` may only repeat that (it is removed from ``kwargs``)."""
        inner = kwargs.pop("inner_channels", None)
        if inner not in (None, channels):
            raise ValueError(f"{head} head: the mechanism reduces to head.channels={channels}; "
                             f"head.inner_channels={inner} must be null or equal to it")

    def inputs(self, feats: list[torch.Tensor]):
        """The stage output(s) this head reads."""
        if isinstance(self.in_index, int):
            return feats[self.in_index]
        return [feats[i] for i in self.in_index]
