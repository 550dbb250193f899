"""The one model factory: config nodes in, a :class:`~segattn.models.segmentor.Segmentor` (or its
:class:`~segattn.models.scale_attention.ScaleAttention` wrapper) out. The trainer, eval.py, ``segattn.load``,
the benchmarks and the scripts all build through it."""

from __future__ import annotations

import torch.nn as nn

from .backbone import ResNet
from .block_attention import block_attention, block_widths
from .heads import FCNHead, build_head
from .layers import apply_init
from .losses import SegmentationLoss
from .scale_attention import wrap
from .segmentor import Segmentor, start_residual_scales, zero_initialised


def build_model(backbone: dict, head: dict, num_classes: int, aux_head: dict | None = None,
                scale_attention: dict | None = None, loss: dict | None = None, init: str = "mmseg",
                residual_init: float = 0.0) -> nn.Module:
    """Build a Segmentor from plain dicts (the ``backbone``, ``head``, ``model.aux_head``,
    ``model.scale_attention`` and ``loss`` config nodes). With ``model.scale_attention.scales`` set, the
    Segmentor is wrapped in :class:`~segattn.models.scale_attention.ScaleAttention` (same interface).
    ``loss.class_weight=auto`` is left for the trainer to resolve (``model.criterion.set_class_counts``).
    ``init`` (``model.init``): the heads' start, ``mmseg`` (the published recipes') or ``pytorch``
    (``segattn.models.layers.apply_init``); the backbone is not touched (it is torchvision's start).
    ``residual_init`` (``model.residual_init``): where the head's zero-initialised residual scales start
    (DANet's and CCNet's gamma, GCNet's last conv, Non-local's output BN, ...); 0, the default, is the
    papers' start (``segattn.models.segmentor.start_residual_scales``)."""
    bb_cfg = dict(backbone)
    name = bb_cfg.pop("name", None)
    attention_name = bb_cfg.pop("block_attention", None)
    attention_kwargs = bb_cfg.pop("block_attention_kwargs", None)
    if name == "timm":  # a timm encoder (segattn/models/timm_backbone.py); its blocks are timm's own
        if attention_name or attention_kwargs:
            raise ValueError(f"backbone.block_attention={attention_name} needs backbone=resnet*: timm's blocks "
                             f"have no place for it")
        from .timm_backbone import build_timm_backbone

        bb = build_timm_backbone(bb_cfg)
    elif callable(attention_name):  # library use: a ``channels -> nn.Module`` factory of one's own
        bb_cfg["block_attention"] = attention_name
    elif attention_name:
        widths = block_widths(bb_cfg.get("depth", 50), bb_cfg.get("width", 64))
        bb_cfg["block_attention"] = block_attention(attention_name, attention_kwargs, widths)
    elif attention_kwargs:
        raise ValueError(f"backbone.block_attention_kwargs={attention_kwargs} is set but backbone.block_attention is null")
    if name != "timm":
        bb = ResNet(**bb_cfg)
    head_module = apply_init(build_head(head, bb.channels, num_classes), init)
    head_module.residual_scale_names = zero_initialised(head_module)
    start_residual_scales(head_module, head_module.residual_scale_names, float(residual_init))
    aux = dict(aux_head or {})
    aux_weight = float(aux.pop("weight", 0.4))
    aux_module = None
    if aux_weight > 0:
        # mmseg's auxiliary head: one 3x3 conv on stage 3 (c4), no concat, dropout 0.1.
        aux_module = FCNHead(bb.channels, num_classes, channels=aux.pop("channels", 256), num_convs=1,
                             concat_input=False, dropout=aux.pop("dropout", 0.1), in_index=2)
        apply_init(aux_module, init)
    criterion = SegmentationLoss(**dict(loss or {}), num_classes=num_classes)
    return wrap(Segmentor(bb, head_module, num_classes, aux_module, aux_weight, criterion=criterion), scale_attention)


def build_model_from_config(cfg: dict, num_classes: int, pretrained: bool = True) -> nn.Module:
    """``build_model`` on a whole training config (``backbone``, ``head``, ``model.aux_head``,
    ``model.scale_attention``, ``loss``): what the trainer, eval.py, the benchmarks and the scripts build.

    ``pretrained=False`` skips ``backbone.pretrained``: the weights come from a checkpoint (resume,
    eval.py), and the ImageNet file need not exist on the machine that resumes or evaluates.
    """
    backbone = dict(cfg["backbone"]) if pretrained else dict(cfg["backbone"], pretrained=None)
    model = cfg.get("model") or {}
    return build_model(backbone, cfg["head"], num_classes, model.get("aux_head"), model.get("scale_attention"),
                       cfg.get("loss"), model.get("init", "mmseg"),
                       model.get("residual_init", 0.0))
