"""segattn: semantic segmentation with swappable attention heads.

The library knows nothing about Hydra: everything takes plain arguments or dicts.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so that ``import segattn.<module>`` does not import torch, albumentations and the models.
    if name == "load":
        from .deploy import load
        return load
    if name == "colorize":
        from .data.labels import colorize
        return colorize
    raise AttributeError(f"module 'segattn' has no attribute {name!r}")


__all__ = ["load", "colorize", "__version__"]
