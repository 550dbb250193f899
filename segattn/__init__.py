"""segattn: semantic segmentation with swappable attention heads.

The library knows nothing about Hydra: everything takes plain arguments or dicts.
"""

__version__ = "0.1.0"
