"""segattn: semantic segmentation with swappable attention heads.

The library knows nothing about Hydra: everything takes plain arguments or dicts.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that ``import segattn.<module>`` does not import torch, albumentations and the models.
    if name == "load":
        from .deploy import load
        return load
    if name == "register_attention":  # the public decorators, for plugins (segattn/plugins.py)
        from .models.attention import register
        return register
    if name == "register_head":
        from .models.heads import register_head
        return register_head
    if name == "colorize":
        from .data.labels import colorize
        return colorize
    raise AttributeError(f"module 'segattn' has no attribute {name!r}")


__all__ = ["load", "colorize", "register_attention", "register_head", "__version__"]
