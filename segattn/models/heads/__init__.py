"""Decode heads, one file each: the base head, the FCN baseline, the generic attention head, and the
heads the papers define; importing this package registers them all.

Every head takes the backbone's four stage outputs ``[c2, c3, c4, c5]`` and returns logits at the
resolution of the stage it reads, either as a tensor or as a dict ``{"out": ..., <extra>: ...}``
whose extra entries are trained with the head's ``loss_weights``.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .attention_head import AttentionHead
from .base import BaseDecodeHead
from .registry import HEADS, HeadFacts, build_head, head_class, head_facts, head_names, head_options, register_head

# Importing each head's module runs its @register_head decorator.
for _m in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _importlib.import_module(f"{__name__}.{_m.name}")

from .fcn import FCNHead  # noqa: E402

__all__ = ["HEADS", "AttentionHead", "BaseDecodeHead", "FCNHead", "HeadFacts", "build_head", "head_class",
           "head_facts", "head_names", "head_options", "register_head"]
