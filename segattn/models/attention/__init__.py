"""Attention mechanisms, one file each; importing this package registers them all."""

from .registry import ATTENTIONS, BLOCK_ATTENTIONS, TAXONOMY_WORDS, build_attention, register  # noqa: F401
from .registry import BN_REMOVES, SOFTMAX_SHIFT, VALUE_CONSTANT  # noqa: F401

# Importing each mechanism's module runs its @register decorator.
import importlib as _importlib
import pkgutil as _pkgutil

for _m in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name != "registry" and not _m.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_m.name}")
