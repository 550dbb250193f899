"""Models: a dilated ResNet, decode heads, the Segmentor that joins them, and the one model factory.

``build_model(backbone, head, num_classes, aux_head, scale_attention)`` takes the config nodes;
``build_model_from_config(cfg, num_classes, pretrained)`` takes a whole training config (the trainer,
eval.py, the benchmarks and the scripts build through it).
"""

from .heads import build_head
from .scale_attention import ScaleAttention
from .factory import build_model, build_model_from_config
from .segmentor import Segmentor, residual_scales

__all__ = ["ScaleAttention", "Segmentor", "build_head", "build_model", "build_model_from_config",
           "residual_scales"]
