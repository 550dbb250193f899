"""timm encoders as backbones (``backbone=timm backbone.model=<name>``; ``pip install -e '.[timm]'``).

The encoder is timm's ``features_only`` network at the configured output stride: the models that can
replace their last strides by dilation (ResNet and ResNet-D, ResNeSt, Res2Net, SE-ResNeXt, RegNet,
EfficientNet, MobileNetV3, ConvNeXt, Xception, CSPNet, RepVGG, ...) give the stride-8 features the
heads were designed for, as the dilated ResNet does; a model that cannot (ViT, Swin, DenseNet, VGG,
DLA, HRNet, GhostNet, ...) is refused with timm's reason. Its last four feature levels stand for
``[c2, c3, c4, c5]``, so every head works unchanged.

Weights are never downloaded: ``backbone.pretrained`` is a local file (``.safetensors``, ``.pth``, ``.bin``;
timm reads ``.pth`` with ``weights_only=True``) or ``hub``, the model's default weights as they already
are in the Hugging Face hub cache or torch hub's checkpoint folder of this machine.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

KEYS = ("model", "output_stride", "pretrained")


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("backbone=timm needs the timm package: pip install -e '.[timm]'") from None
    return timm


def cached_weights(model: str) -> str:
    """``backbone.pretrained=hub``: the file of ``model``'s default weights already on this machine (the
    Hugging Face hub cache, then torch hub's checkpoints folder); never a download."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None:
        raise ValueError(f"backbone.pretrained=hub: timm has no pretrained weights for backbone.model={model!r}")
    looked = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        cache = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=cache)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        looked.append(f"{cache} (models--{cfg.hf_hub_id.replace('/', '--')})")
    if cfg.url:
        hub = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url))
        if os.path.isfile(hub):
            return hub
        looked.append(hub)
    raise FileNotFoundError(
        f"backbone.pretrained=hub: the weights of backbone.model={model!r} are not on this machine (looked in "
        f"{'; '.join(looked) or 'nowhere: timm names no source'}), and weights are never downloaded. Copy them "
        f"there from a machine that has them, or give the file: backbone.pretrained=/path/to/model.safetensors")


class TimmBackbone(nn.Module):
    """A timm ``features_only`` encoder; ``forward`` returns its last four feature maps (``[c2, c3, c4,
    c5]`` of a ResNet), ``channels`` their widths."""

    def __init__(self, model: str, output_stride: int = 8, pretrained: str | None = None):
        super().__init__()
        timm = _timm()
        if model.startswith("hf-hub:"):
            raise ValueError(f"backbone.model={model!r}: a hub name would be downloaded; give timm's model name "
                             f"(e.g. resnet50d) and the weights as backbone.pretrained=FILE")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"backbone.output_stride={output_stride!r}; expected 8, 16 or 32")
        weights = None
        if pretrained:
            weights = cached_weights(model) if pretrained == "hub" else str(pretrained)
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"backbone.pretrained={pretrained!r}: no such file (weights are never "
                                        f"downloaded: give a local file, or 'hub' for the hub cache's copy)")
        kwargs = dict(pretrained=weights is not None, features_only=True)
        if weights is not None:  # timm's 'file' source: read from disk, never from the hub or a URL
            kwargs["pretrained_cfg_overlay"] = dict(file=weights)
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        try:
            self.body = timm.create_model(model, **kwargs)
        except RuntimeError as e:
            if weights is None:
                raise
            raise ValueError(f"backbone.pretrained={weights!r} does not fit backbone.model={model!r}: "
                             f"{str(e).splitlines()[0][:300]}") from None
        except (TypeError, AssertionError, NotImplementedError) as e:  # the model has no dilated form
            if "output_stride" not in kwargs:
                raise
            raise ValueError(self._cannot_dilate(model, output_stride, e)) from None
        except Exception as e:
            if "Unknown model" not in str(e):
                raise
            raise ValueError(f"backbone.model={model!r} is not a timm model ({e}); timm.list_models('*name*') "
                             f"lists them") from None
        reductions = self.body.feature_info.reduction()
        if reductions[-1] != output_stride:  # accepted the argument but kept its strides
            raise ValueError(self._cannot_dilate(model, output_stride, f"its features come at strides {reductions}"))
        if len(reductions) < 4:
            raise ValueError(f"backbone.model={model!r} gives {len(reductions)} feature levels; the heads take four "
                             f"(c2..c5)")
        self.model, self.output_stride, self.pretrained = model, output_stride, weights
        self.channels = list(self.body.feature_info.channels()[-4:])
        self.reductions = list(reductions[-4:])

    @staticmethod
    def _cannot_dilate(model: str, output_stride: int, why) -> str:
        why = str(why).strip() or type(why).__name__
        return (f"backbone.model={model!r} cannot give features at backbone.output_stride={output_stride}: timm's "
                f"model cannot dilate its last stages ({why[:200]}). Take a model that can (resnet*, resnet*d, "
                f"resnest*, regnet*, efficientnet*, convnext*, ...), or set backbone.output_stride=32 (no dilation; "
                f"the heads then see maps 1/32 of the image)")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))[-4:]


def build_timm_backbone(cfg: dict) -> TimmBackbone:
    """``backbone=timm``'s node (``model``, ``output_stride``, ``pretrained``) -> the encoder."""
    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise ValueError(f"backbone.{unknown[0]} is not a key of backbone=timm (its keys: {', '.join(KEYS)}); "
                         f"block attention and the ResNet's options belong to backbone=resnet*")
    if not cfg.get("model"):
        raise ValueError("backbone=timm needs backbone.model=<timm model name>, e.g. backbone.model=resnet50d")
    return TimmBackbone(str(cfg["model"]), int(cfg.get("output_stride", 8)), cfg.get("pretrained"))
