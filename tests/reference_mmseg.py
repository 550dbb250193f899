"""Independent re-implementations of mmsegmentation 1.x decode heads, for equivalence tests.

Written from mmseg's / mmcv's own sources (not from segattn), in plain PyTorch, keeping their module
and attribute names so that a parameter-name map to our heads is readable:

- open-mmlab/mmsegmentation  mmseg/models/decode_heads/{decode_head,fcn_head,nl_head,cc_head,gc_head,
                             ema_head,da_head,psa_head,dnl_head,isa_head,apc_head,ann_head,ocr_head}.py,
                             mmseg/models/utils/self_attention_block.py (the general form, all options)
- open-mmlab/mmcv            mmcv/cnn/bricks/{conv_module,non_local,context_block,scale}.py,
                             mmcv/ops/{cc_attention,psa_mask}.py, mmcv/ops/csrc/pytorch/cpu/psamask.cpp

Only what the recipes use is kept (no conv_cfg / norm_cfg / act_cfg plumbing: BN and ReLU, which is
what the cityscapes / ADE recipes build; SyncBN computes the same function as BN in eval mode and on
one process). Not collected by pytest (no ``test_`` prefix); used by tests/test_reference_mmseg_heads.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------------
# mmcv bricks
# --------------------------------------------------------------------------------------------------
class ConvModule(nn.Module):
    """Follows mmcv/cnn/bricks/conv_module.py (order conv -> norm -> act).

    ``bias='auto'`` means a bias only when no norm follows; mmcv's build_norm_layer names a
    BatchNorm/SyncBN layer ``bn``, the activation is ``activate``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, dilation=1, bias="auto",
                 norm=True, act=True):
        super().__init__()
        self.with_norm = bool(norm)
        self.with_activation = bool(act)
        if bias == "auto":
            bias = not self.with_norm
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=bias)
        if self.with_norm:
            self.bn = nn.BatchNorm2d(out_channels)
        if self.with_activation:
            self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        if self.with_activation:
            x = self.activate(x)
        return x


class Scale(nn.Module):
    """Follows mmcv/cnn/bricks/scale.py: one learnable scalar (a 0-dim parameter), x * scale."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x):
        return x * self.scale


def resize(input, size, mode="bilinear", align_corners=None):
    """mmseg's ``resize`` (mmseg/models/utils/wrappers.py) minus its warning: F.interpolate."""
    return F.interpolate(input, size, None, mode, align_corners)


# --------------------------------------------------------------------------------------------------
# Decode heads
# --------------------------------------------------------------------------------------------------
class BaseDecodeHead(nn.Module):
    """Follows mmseg/models/decode_heads/decode_head.py: ``conv_seg`` (1x1, bias) after
    ``dropout`` (Dropout2d, only when dropout_ratio > 0); input_transform=None, in_index=-1."""

    def __init__(self, in_channels, channels, num_classes, dropout_ratio=0.1, in_index=-1, align_corners=False):
        super().__init__()
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.in_index = in_index
        self.align_corners = align_corners
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def _transform_inputs(self, inputs):
        return inputs[self.in_index]

    def cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class FCNHead(BaseDecodeHead):
    """Follows mmseg/models/decode_heads/fcn_head.py: num_convs ConvModules (k x k), optional
    conv_cat on cat([x, convs(x)]) (padding k // 2), cls_seg."""

    def __init__(self, num_convs=2, kernel_size=3, concat_input=True, dilation=1, **kwargs):
        super().__init__(**kwargs)
        self.num_convs = num_convs
        self.concat_input = concat_input
        pad = (kernel_size // 2) * dilation
        convs = [ConvModule(self.in_channels, self.channels, kernel_size, padding=pad, dilation=dilation)]
        convs += [ConvModule(self.channels, self.channels, kernel_size, padding=pad, dilation=dilation)
                  for _ in range(num_convs - 1)]
        self.convs = nn.Sequential(*convs) if num_convs else nn.Identity()
        if concat_input:
            self.conv_cat = ConvModule(self.in_channels + self.channels, self.channels, kernel_size,
                                       padding=kernel_size // 2)

    def _forward_feature(self, inputs):
        x = self._transform_inputs(inputs)
        feats = self.convs(x)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats

    def forward(self, inputs):
        return self.cls_seg(self._forward_feature(inputs))


class _BlockBetweenConvsHead(FCNHead):
    """mmseg's NLHead / CCHead / GCHead share this forward: convs[0] -> block -> convs[1] ->
    [conv_cat(cat([x, .]))] -> cls_seg (num_convs is forced to 2)."""

    def block(self, x):  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        output = self.convs[0](x)
        output = self.block(output)
        output = self.convs[1](output)
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        return self.cls_seg(output)


# ---- Non-local --------------------------------------------------------------------------------
class NonLocal2d(nn.Module):
    """Follows mmcv/cnn/bricks/non_local.py (_NonLocalNd + NonLocal2d), embedded_gaussian /
    dot_product / gaussian modes.

    g, theta, phi: 1x1 ConvModules without norm or act (so with bias); conv_out: 1x1 ConvModule with
    the norm (no bias) and no act. inter_channels = max(C // reduction, 1). embedded_gaussian:
    softmax(theta^T phi / sqrt(inter_channels) if use_scale). sub_sample wraps g and phi in
    nn.Sequential(ConvModule, MaxPool2d(kernel_size=(2, 2))) (floor mode, the nn default).
    Output x + conv_out(y).
    """

    def __init__(self, in_channels, reduction=2, use_scale=True, mode="embedded_gaussian", sub_sample=False):
        super().__init__()
        self.in_channels = in_channels
        self.reduction = reduction
        self.use_scale = use_scale
        self.inter_channels = max(in_channels // reduction, 1)
        self.mode = mode
        self.sub_sample = sub_sample
        assert mode in ("gaussian", "embedded_gaussian", "dot_product")
        self.g = ConvModule(in_channels, self.inter_channels, 1, norm=False, act=False)
        self.conv_out = ConvModule(self.inter_channels, in_channels, 1, norm=True, act=False)
        if mode != "gaussian":
            self.theta = ConvModule(in_channels, self.inter_channels, 1, norm=False, act=False)
            self.phi = ConvModule(in_channels, self.inter_channels, 1, norm=False, act=False)
        if sub_sample:
            max_pool_layer = nn.MaxPool2d(kernel_size=(2, 2))
            self.g = nn.Sequential(self.g, max_pool_layer)
            if mode != "gaussian":
                self.phi = nn.Sequential(self.phi, max_pool_layer)
            else:
                self.phi = max_pool_layer

    def embedded_gaussian(self, theta_x, phi_x):
        pairwise_weight = torch.matmul(theta_x, phi_x)
        if self.use_scale:
            pairwise_weight /= theta_x.shape[-1] ** 0.5
        return pairwise_weight.softmax(dim=-1)

    def gaussian(self, theta_x, phi_x):
        return torch.matmul(theta_x, phi_x).softmax(dim=-1)

    def dot_product(self, theta_x, phi_x):
        pairwise_weight = torch.matmul(theta_x, phi_x)
        pairwise_weight /= pairwise_weight.shape[-1]
        return pairwise_weight

    def forward(self, x):
        n = x.size(0)
        g_x = self.g(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        if self.mode == "gaussian":
            theta_x = x.view(n, self.in_channels, -1).permute(0, 2, 1)
            phi_x = (self.phi(x) if self.sub_sample else x).view(n, self.in_channels, -1)
        else:
            theta_x = self.theta(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
            phi_x = self.phi(x).view(n, self.inter_channels, -1)
        pairwise_weight = getattr(self, self.mode)(theta_x, phi_x)
        y = torch.matmul(pairwise_weight, g_x)
        y = y.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, *x.size()[2:])
        return x + self.conv_out(y)


class NLHead(_BlockBetweenConvsHead):
    """Follows mmseg/models/decode_heads/nl_head.py: FCNHead(num_convs=2) with ``nl_block`` =
    NonLocal2d(channels, reduction, use_scale, norm_cfg, mode) between convs[0] and convs[1].

    (``sub_sample`` is mmcv NonLocal2d's option; mmseg's NLHead leaves it at False. It is exposed
    here only to check our sub-sampling against mmcv's.)
    """

    def __init__(self, reduction=2, use_scale=True, mode="embedded_gaussian", sub_sample=False, **kwargs):
        super().__init__(num_convs=2, **kwargs)
        self.nl_block = NonLocal2d(self.channels, reduction=reduction, use_scale=use_scale, mode=mode,
                                   sub_sample=sub_sample)

    def block(self, x):
        return self.nl_block(x)


# ---- Criss-cross ------------------------------------------------------------------------------
def NEG_INF_DIAG(n, device, dtype):
    """mmcv/ops/cc_attention.py: an n x n matrix, -inf on the diagonal, 0 elsewhere."""
    return torch.diag(torch.full((n,), float("-inf"), device=device, dtype=dtype), 0)


class CrissCrossAttention(nn.Module):
    """Follows mmcv/ops/cc_attention.py (the pure-PyTorch version, mmcv >= 1.3.13).

    query/key: 1x1 convs to C // 8, value 1x1 conv to C, gamma = Scale(0). energy_H over the column
    with -inf on the self position, energy_W over the row, ONE softmax over their concatenation
    (H + W), out = gamma * (col + row aggregation) + x.
    """

    def __init__(self, in_channels):
        super().__init__()
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.0)
        self.in_channels = in_channels

    def forward(self, x):
        B, C, H, W = x.size()
        query = self.query_conv(x)
        key = self.key_conv(x)
        value = self.value_conv(x)
        energy_H = torch.einsum("bchw,bciw->bwhi", query, key) + NEG_INF_DIAG(H, query.device, query.dtype)
        energy_H = energy_H.transpose(1, 2)  # [B, H, W, H]
        energy_W = torch.einsum("bchw,bchj->bhwj", query, key)  # [B, H, W, W]
        attn = F.softmax(torch.cat([energy_H, energy_W], dim=-1), dim=-1)
        out = torch.einsum("bciw,bhwi->bchw", value, attn[..., :H])
        out = out + torch.einsum("bchj,bhwj->bchw", value, attn[..., H:])
        return (self.gamma(out) + x).contiguous()


class CCHead(_BlockBetweenConvsHead):
    """Follows mmseg/models/decode_heads/cc_head.py: FCNHead(num_convs=2), ``cca`` applied
    ``recurrence`` times (shared weights) between convs[0] and convs[1]."""

    def __init__(self, recurrence=2, **kwargs):
        super().__init__(num_convs=2, **kwargs)
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(self.channels)

    def block(self, x):
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x


# ---- Global context ---------------------------------------------------------------------------
class ContextBlock(nn.Module):
    """Follows mmcv/cnn/bricks/context_block.py: planes = int(C * ratio); 'att' pooling = softmax
    over H*W of conv_mask (1x1 -> 1, bias), context = x @ weights; channel_mul (sigmoid, first) and
    channel_add transforms conv1x1 -> LayerNorm([planes, 1, 1]) -> ReLU -> conv1x1."""

    def __init__(self, in_channels, ratio, pooling_type="att", fusion_types=("channel_add",)):
        super().__init__()
        self.in_channels = in_channels
        self.planes = int(in_channels * ratio)
        self.pooling_type = pooling_type
        self.fusion_types = fusion_types
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
            self.softmax = nn.Softmax(dim=2)
        else:
            self.avg_pool = nn.AdaptiveAvgPool2d(1)

        def transform():
            return nn.Sequential(nn.Conv2d(in_channels, self.planes, 1), nn.LayerNorm([self.planes, 1, 1]),
                                 nn.ReLU(inplace=True), nn.Conv2d(self.planes, in_channels, 1))

        self.channel_add_conv = transform() if "channel_add" in fusion_types else None
        self.channel_mul_conv = transform() if "channel_mul" in fusion_types else None

    def spatial_pool(self, x):
        batch, channel, height, width = x.size()
        if self.pooling_type == "att":
            input_x = x.view(batch, channel, height * width).unsqueeze(1)  # [N, 1, C, HW]
            context_mask = self.softmax(self.conv_mask(x).view(batch, 1, height * width)).unsqueeze(-1)
            return torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)
        return self.avg_pool(x)

    def forward(self, x):
        context = self.spatial_pool(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out


class GCHead(_BlockBetweenConvsHead):
    """Follows mmseg/models/decode_heads/gc_head.py: FCNHead(num_convs=2) with ``gc_block`` =
    ContextBlock(channels, ratio=1/4, 'att', ('channel_add',)) between convs[0] and convs[1]."""

    def __init__(self, ratio=1 / 4.0, pooling_type="att", fusion_types=("channel_add",), **kwargs):
        super().__init__(num_convs=2, **kwargs)
        self.gc_block = ContextBlock(self.channels, ratio=ratio, pooling_type=pooling_type,
                                     fusion_types=tuple(fusion_types))

    def block(self, x):
        return self.gc_block(x)


# ---- EMA ---------------------------------------------------------------------------------------
class EMAModule(nn.Module):
    """Follows EMAModule in mmseg/models/decode_heads/ema_head.py.

    ``bases`` buffer (1, C, K). Under no_grad, num_stages times: attention = softmax_k(feats^T bases),
    attention_normed = F.normalize(p=1) over the positions, bases = F.normalize(p=2) over the
    channels of feats @ attention_normed. Reconstruction bases @ attention^T. In training:
    bases <- (1 - momentum) * bases + momentum * F.normalize(batch mean of bases) (no distributed
    reduce here: one process).
    """

    def __init__(self, channels, num_bases, num_stages, momentum):
        super().__init__()
        self.num_bases = num_bases
        self.num_stages = num_stages
        self.momentum = momentum
        bases = torch.zeros(1, channels, num_bases)
        bases.normal_(0, math.sqrt(2.0 / num_bases))
        self.register_buffer("bases", F.normalize(bases, dim=1, p=2))

    def forward(self, feats):
        batch_size, channels, height, width = feats.size()
        feats = feats.view(batch_size, channels, height * width)
        bases = self.bases.repeat(batch_size, 1, 1)
        with torch.no_grad():
            for _ in range(self.num_stages):
                attention = torch.einsum("bcn,bck->bnk", feats, bases)
                attention = F.softmax(attention, dim=2)
                attention_normed = F.normalize(attention, dim=1, p=1)
                bases = torch.einsum("bcn,bnk->bck", feats, attention_normed)
                bases = F.normalize(bases, dim=1, p=2)
        feats_recon = torch.einsum("bck,bnk->bcn", bases, attention)
        feats_recon = feats_recon.view(batch_size, channels, height, width)
        if self.training:
            bases = bases.mean(dim=0, keepdim=True)
            bases = F.normalize(bases, dim=1, p=2)
            self.bases = (1 - self.momentum) * self.bases + self.momentum * bases
        return feats_recon


class EMAHead(BaseDecodeHead):
    """Follows EMAHead in mmseg/models/decode_heads/ema_head.py.

    ema_in_conv (3x3 ConvModule in -> ema_channels), ema_mid_conv (1x1 conv with bias, no norm/act,
    frozen), ema_module, relu, ema_out_conv (1x1 conv + norm, no act), relu(identity + .),
    bottleneck (3x3 ema_channels -> channels), conv_cat (3x3 on cat([x, .])), cls_seg.
    """

    def __init__(self, ema_channels, num_bases, num_stages, concat_input=True, momentum=0.1, **kwargs):
        super().__init__(**kwargs)
        self.ema_channels = ema_channels
        self.concat_input = concat_input
        self.ema_module = EMAModule(ema_channels, num_bases, num_stages, momentum)
        self.ema_in_conv = ConvModule(self.in_channels, ema_channels, 3, padding=1)
        self.ema_mid_conv = ConvModule(ema_channels, ema_channels, 1, norm=False, act=False)
        for param in self.ema_mid_conv.parameters():
            param.requires_grad = False
        self.ema_out_conv = ConvModule(ema_channels, ema_channels, 1, norm=True, act=False)
        self.bottleneck = ConvModule(ema_channels, self.channels, 3, padding=1)
        if concat_input:
            self.conv_cat = ConvModule(self.in_channels + self.channels, self.channels, 3, padding=1)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        feats = self.ema_in_conv(x)
        identity = feats
        feats = self.ema_mid_conv(feats)
        recon = self.ema_module(feats)
        recon = F.relu(recon, inplace=True)
        recon = self.ema_out_conv(recon)
        output = F.relu(identity + recon, inplace=True)
        output = self.bottleneck(output)
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        return self.cls_seg(output)


# ---- mmseg's general SelfAttentionBlock -----------------------------------------------------------
class SelfAttentionBlock(nn.Module):
    """Follows mmseg/models/utils/self_attention_block.py with all its options: key/query projections
    of ``key_query_num_convs`` 1x1 layers (ConvModules with BN+ReLU when ``key_query_norm``, else plain
    convs with bias), the value projected to ``channels`` when ``with_out`` else to ``out_channels``
    (``value_out_num_convs`` layers, ConvModules when ``value_out_norm``), optional down-sampling of
    query and of key+value, sim = q^T k (* channels^-0.5 when ``matmul_norm``), softmax over the keys,
    context reshaped to the query's size, then ``out_project`` when ``with_out``."""

    def __init__(self, key_in_channels, query_in_channels, channels, out_channels, share_key_query,
                 query_downsample, key_downsample, key_query_num_convs, value_out_num_convs, key_query_norm,
                 value_out_norm, matmul_norm, with_out):
        super().__init__()
        if share_key_query:
            assert key_in_channels == query_in_channels
        self.channels = channels
        self.key_project = self.build_project(key_in_channels, channels, key_query_num_convs, key_query_norm)
        if share_key_query:
            self.query_project = self.key_project
        else:
            self.query_project = self.build_project(query_in_channels, channels, key_query_num_convs, key_query_norm)
        self.value_project = self.build_project(key_in_channels, channels if with_out else out_channels,
                                                value_out_num_convs, value_out_norm)
        if with_out:
            self.out_project = self.build_project(channels, out_channels, value_out_num_convs, value_out_norm)
        else:
            self.out_project = None
        self.query_downsample = query_downsample
        self.key_downsample = key_downsample
        self.matmul_norm = matmul_norm

    @staticmethod
    def build_project(in_channels, channels, num_convs, use_conv_module):
        if use_conv_module:
            convs = [ConvModule(in_channels, channels, 1)]
            convs += [ConvModule(channels, channels, 1) for _ in range(num_convs - 1)]
        else:
            convs = [nn.Conv2d(in_channels, channels, 1)]
            convs += [nn.Conv2d(channels, channels, 1) for _ in range(num_convs - 1)]
        return nn.Sequential(*convs) if len(convs) > 1 else convs[0]

    def forward(self, query_feats, key_feats):
        batch_size = query_feats.size(0)
        query = self.query_project(query_feats)
        if self.query_downsample is not None:
            query = self.query_downsample(query)
        query = query.reshape(*query.shape[:2], -1).permute(0, 2, 1).contiguous()
        key = self.key_project(key_feats)
        value = self.value_project(key_feats)
        if self.key_downsample is not None:
            key = self.key_downsample(key)
            value = self.key_downsample(value)
        key = key.reshape(*key.shape[:2], -1)
        value = value.reshape(*value.shape[:2], -1).permute(0, 2, 1).contiguous()
        sim_map = torch.matmul(query, key)
        if self.matmul_norm:
            sim_map = (self.channels ** -0.5) * sim_map
        sim_map = F.softmax(sim_map, dim=-1)
        context = torch.matmul(sim_map, value).permute(0, 2, 1).contiguous()
        context = context.reshape(batch_size, -1, *query_feats.shape[2:])
        if self.out_project is not None:
            context = self.out_project(context)
        return context


# ---- DANet -------------------------------------------------------------------------------------
class PAM(SelfAttentionBlock):
    """Follows PAM in mmseg/models/decode_heads/da_head.py: SelfAttentionBlock(x, x), gamma Scale(0),
    out = gamma(context) + x."""

    def __init__(self, in_channels, channels):
        # one projection each, plain convs with bias, value straight to in_channels, no 1/sqrt(channels)
        super().__init__(in_channels, in_channels, channels, in_channels, share_key_query=False,
                         query_downsample=None, key_downsample=None, key_query_num_convs=1, value_out_num_convs=1,
                         key_query_norm=False, value_out_norm=False, matmul_norm=False, with_out=False)
        self.gamma = Scale(0)

    def forward(self, x):
        return self.gamma(super().forward(x, x)) + x


class CAM(nn.Module):
    """Follows CAM in mmseg/models/decode_heads/da_head.py: energy = X X^T, energy_new =
    rowmax(energy) - energy, softmax over the last dim, out = gamma(attention @ X) + x."""

    def __init__(self):
        super().__init__()
        self.gamma = Scale(0)

    def forward(self, x):
        batch_size, channels, height, width = x.size()
        proj_query = x.view(batch_size, channels, -1)
        proj_key = x.view(batch_size, channels, -1).permute(0, 2, 1)
        energy = torch.bmm(proj_query, proj_key)
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = F.softmax(energy_new, dim=-1)
        out = torch.bmm(attention, x.view(batch_size, channels, -1)).view(batch_size, channels, height, width)
        return self.gamma(out) + x


class DAHead(BaseDecodeHead):
    """Follows DAHead in mmseg/models/decode_heads/da_head.py: per branch in_conv (3x3) -> PAM/CAM ->
    out_conv (3x3) -> its own dropout + conv_seg; ``cls_seg`` on pam_feat + cam_feat. Returns
    (pam_cam_out, pam_out, cam_out)."""

    def __init__(self, pam_channels, **kwargs):
        super().__init__(**kwargs)
        self.pam_channels = pam_channels
        self.pam_in_conv = ConvModule(self.in_channels, self.channels, 3, padding=1)
        self.pam = PAM(self.channels, pam_channels)
        self.pam_out_conv = ConvModule(self.channels, self.channels, 3, padding=1)
        self.pam_conv_seg = nn.Conv2d(self.channels, self.num_classes, kernel_size=1)
        self.cam_in_conv = ConvModule(self.in_channels, self.channels, 3, padding=1)
        self.cam = CAM()
        self.cam_out_conv = ConvModule(self.channels, self.channels, 3, padding=1)
        self.cam_conv_seg = nn.Conv2d(self.channels, self.num_classes, kernel_size=1)

    def pam_cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.pam_conv_seg(feat)

    def cam_cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.cam_conv_seg(feat)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        pam_out = self.pam_cls_seg(pam_feat)
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        cam_out = self.cam_cls_seg(cam_feat)
        pam_cam_out = self.cls_seg(pam_feat + cam_feat)
        return pam_cam_out, pam_out, cam_out


# ---- PSANet ------------------------------------------------------------------------------------
def psamask(input, psa_type, mask_size):
    """mmcv's PSAMask forward as the explicit loop of mmcv/ops/csrc/pytorch/cpu/psamask.cpp
    (psamask_collect_forward / psamask_distribute_forward), vectorised over the batch only.

    The output starts as zeros (mmcv/ops/psa_mask.py: ``input.new_zeros``); for each feature
    position (h, w) only the part of its mask that falls on the map, hidx in [hstart, hend),
    widx in [wstart, wend), is copied:
      collect:    out[n, (hidx + h - half_h) * W + (widx + w - half_w), h, w] = mask[n, hidx * mw + widx, h, w]
      distribute: out[n, h * W + w, hidx + h - half_h, widx + w - half_w]     = mask[n, hidx * mw + widx, h, w]
    """
    h_mask, w_mask = mask_size
    num_, channels, h_feature, w_feature = input.shape
    assert channels == h_mask * w_mask
    half_h_mask, half_w_mask = (h_mask - 1) // 2, (w_mask - 1) // 2
    output = input.new_zeros((num_, h_feature * w_feature, h_feature, w_feature))
    out_flat = output.view(num_, h_feature * w_feature, h_feature * w_feature)
    for h in range(h_feature):
        for w in range(w_feature):
            hstart = max(0, half_h_mask - h)
            hend = min(h_mask, h_feature + half_h_mask - h)
            wstart = max(0, half_w_mask - w)
            wend = min(w_mask, w_feature + half_w_mask - w)
            for hidx in range(hstart, hend):
                for widx in range(wstart, wend):
                    other = (hidx + h - half_h_mask) * w_feature + (widx + w - half_w_mask)
                    here = h * w_feature + w
                    value = input[:, hidx * w_mask + widx, h, w]
                    if psa_type == "collect":
                        out_flat[:, other, here] = value
                    elif psa_type == "distribute":
                        out_flat[:, here, other] = value
                    else:
                        raise ValueError(psa_type)
    return output


class PSAMask(nn.Module):
    """mmcv/ops/psa_mask.py's module wrapper."""

    def __init__(self, psa_type, mask_size):
        super().__init__()
        assert psa_type in ("collect", "distribute")
        self.psa_type = psa_type
        self.mask_size = tuple(mask_size)

    def forward(self, input):
        return psamask(input, self.psa_type, self.mask_size)


class PSAHead(BaseDecodeHead):
    """Follows mmseg/models/decode_heads/psa_head.py (1.x; compact=False).

    reduce / reduce_p: 1x1 ConvModule in -> channels; attention / attention_p: 1x1 ConvModule then a
    1x1 conv (no bias) to mask_h * mask_w. Shrink: if both h % s and w % s are non-zero,
    (h - 1) // s + 1 with align_corners=True, else h // s with align_corners=False (s = 1 keeps
    self.align_corners). psamask, softmax over dim 1, bmm(x (c, hw), y (hw, hw)) * (1 / norm).
    proj: ConvModule kernel_size=1 WITH padding=1 (so (h + 2) x (w + 2)), resized to the identity's
    size with that align_corners; bottleneck 3x3 on cat([identity, out]); cls_seg.
    """

    def __init__(self, mask_size, psa_type="bi-direction", compact=False, shrink_factor=2,
                 normalization_factor=1.0, psa_softmax=True, **kwargs):
        super().__init__(**kwargs)
        assert psa_type in ("collect", "distribute", "bi-direction") and not compact
        self.psa_type = psa_type
        self.compact = compact
        self.shrink_factor = shrink_factor
        self.mask_size = tuple(mask_size)
        mask_h, mask_w = self.mask_size
        self.psa_softmax = psa_softmax
        if normalization_factor is None:
            normalization_factor = mask_h * mask_w
        self.normalization_factor = normalization_factor

        self.reduce = ConvModule(self.in_channels, self.channels, 1)
        self.attention = nn.Sequential(ConvModule(self.channels, self.channels, 1),
                                       nn.Conv2d(self.channels, mask_h * mask_w, kernel_size=1, bias=False))
        if psa_type == "bi-direction":
            self.reduce_p = ConvModule(self.in_channels, self.channels, 1)
            self.attention_p = nn.Sequential(ConvModule(self.channels, self.channels, 1),
                                             nn.Conv2d(self.channels, mask_h * mask_w, kernel_size=1, bias=False))
            self.psamask_collect = PSAMask("collect", mask_size)
            self.psamask_distribute = PSAMask("distribute", mask_size)
        else:
            self.psamask = PSAMask(psa_type, mask_size)
        self.proj = ConvModule(self.channels * (2 if psa_type == "bi-direction" else 1), self.in_channels, 1,
                               padding=1)
        self.bottleneck = ConvModule(self.in_channels * 2, self.channels, 3, padding=1)

    def _shrink(self, h, w):
        s = self.shrink_factor
        if h % s and w % s:
            return (h - 1) // s + 1, (w - 1) // s + 1, True
        return h // s, w // s, False

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        identity = x
        align_corners = self.align_corners
        if self.psa_type in ("collect", "distribute"):
            out = self.reduce(x)
            n, c, h, w = out.size()
            if self.shrink_factor != 1:
                h, w, align_corners = self._shrink(h, w)
                out = resize(out, size=(h, w), mode="bilinear", align_corners=align_corners)
            y = self.psamask(self.attention(out))
            if self.psa_softmax:
                y = F.softmax(y, dim=1)
            out = torch.bmm(out.view(n, c, h * w), y.view(n, h * w, h * w)).view(n, c, h, w) * (
                1.0 / self.normalization_factor)
        else:
            x_col = self.reduce(x)
            x_dis = self.reduce_p(x)
            n, c, h, w = x_col.size()
            if self.shrink_factor != 1:
                h, w, align_corners = self._shrink(h, w)
                x_col = resize(x_col, size=(h, w), mode="bilinear", align_corners=align_corners)
                x_dis = resize(x_dis, size=(h, w), mode="bilinear", align_corners=align_corners)
            y_col = self.psamask_collect(self.attention(x_col))
            y_dis = self.psamask_distribute(self.attention_p(x_dis))
            if self.psa_softmax:
                y_col = F.softmax(y_col, dim=1)
                y_dis = F.softmax(y_dis, dim=1)
            x_col = torch.bmm(x_col.view(n, c, h * w), y_col.view(n, h * w, h * w)).view(n, c, h, w) * (
                1.0 / self.normalization_factor)
            x_dis = torch.bmm(x_dis.view(n, c, h * w), y_dis.view(n, h * w, h * w)).view(n, c, h, w) * (
                1.0 / self.normalization_factor)
            out = torch.cat([x_col, x_dis], 1)
        out = self.proj(out)
        out = resize(out, size=identity.shape[2:], mode="bilinear", align_corners=align_corners)
        out = self.bottleneck(torch.cat((identity, out), dim=1))
        return self.cls_seg(out)


# ---- Disentangled non-local ---------------------------------------------------------------------
class DisentangledNonLocal2d(NonLocal2d):
    """Follows DisentangledNonLocal2d in mmseg/models/decode_heads/dnl_head.py: mmcv NonLocal2d plus
    ``conv_mask`` (1x1 -> 1, bias), whitening (theta minus its mean over positions, phi too), logits
    / sqrt(C') / temperature in embedded_gaussian, unary term softmax(conv_mask(x)) @ g, and
    x + conv_out(y) + conv_out(unary_x)."""

    def __init__(self, *args, temperature, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.conv_mask = nn.Conv2d(self.in_channels, 1, kernel_size=1)

    def embedded_gaussian(self, theta_x, phi_x):
        pairwise_weight = torch.matmul(theta_x, phi_x)
        if self.use_scale:
            pairwise_weight /= theta_x.shape[-1] ** 0.5
        pairwise_weight /= self.temperature
        return pairwise_weight.softmax(dim=-1)

    def forward(self, x):
        n = x.size(0)
        g_x = self.g(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(n, self.inter_channels, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(n, self.inter_channels, -1)
        theta_x -= theta_x.mean(dim=-2, keepdim=True)
        phi_x -= phi_x.mean(dim=-1, keepdim=True)
        pairwise_weight = getattr(self, self.mode)(theta_x, phi_x)
        y = torch.matmul(pairwise_weight, g_x)
        y = y.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, *x.size()[2:])
        unary_mask = self.conv_mask(x).view(n, 1, -1).softmax(dim=-1)
        unary_x = torch.matmul(unary_mask, g_x)
        unary_x = unary_x.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, 1, 1)
        return x + self.conv_out(y) + self.conv_out(unary_x)


class DNLHead(_BlockBetweenConvsHead):
    """Follows mmseg/models/decode_heads/dnl_head.py: FCNHead(num_convs=2) with ``dnl_block`` between
    convs[0] and convs[1]."""

    def __init__(self, reduction=2, use_scale=True, mode="embedded_gaussian", temperature=0.05, **kwargs):
        super().__init__(num_convs=2, **kwargs)
        self.dnl_block = DisentangledNonLocal2d(self.channels, reduction=reduction, use_scale=use_scale, mode=mode,
                                                temperature=temperature)

    def block(self, x):
        return self.dnl_block(x)


# ---- ISA -------------------------------------------------------------------------------------------
class ISASelfAttentionBlock(SelfAttentionBlock):
    """Follows SelfAttentionBlock in mmseg/models/decode_heads/isa_head.py: two BN+ReLU key/query convs,
    one plain value conv to in_channels, matmul_norm, no out_project, then ``output_project``
    (ConvModule 1x1)."""

    def __init__(self, in_channels, channels):
        super().__init__(key_in_channels=in_channels, query_in_channels=in_channels, channels=channels,
                         out_channels=in_channels, share_key_query=False, query_downsample=None,
                         key_downsample=None, key_query_num_convs=2, key_query_norm=True, value_out_num_convs=1,
                         value_out_norm=False, matmul_norm=True, with_out=False)
        self.output_project = ConvModule(in_channels, in_channels, 1)

    def forward(self, x):
        return self.output_project(super().forward(x, x))


class ISAHead(BaseDecodeHead):
    """Follows mmseg/models/decode_heads/isa_head.py: in_conv (3x3), pad to multiples of down_factor
    (split pad // 2 before), global relation over the interlaced groups, local relation within the
    blocks, un-permute, crop, out_conv (1x1) on cat([x, residual]), cls_seg."""

    def __init__(self, isa_channels, down_factor=(8, 8), **kwargs):
        super().__init__(**kwargs)
        self.down_factor = down_factor
        self.in_conv = ConvModule(self.in_channels, self.channels, 3, padding=1)
        self.global_relation = ISASelfAttentionBlock(self.channels, isa_channels)
        self.local_relation = ISASelfAttentionBlock(self.channels, isa_channels)
        self.out_conv = ConvModule(self.channels * 2, self.channels, 1)

    def forward(self, inputs):
        x_ = self._transform_inputs(inputs)
        x = self.in_conv(x_)
        residual = x
        n, c, h, w = x.size()
        loc_h, loc_w = self.down_factor
        glb_h, glb_w = math.ceil(h / loc_h), math.ceil(w / loc_w)
        pad_h, pad_w = glb_h * loc_h - h, glb_w * loc_w - w
        if pad_h > 0 or pad_w > 0:
            padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
            x = F.pad(x, padding)
        x = x.view(n, c, glb_h, loc_h, glb_w, loc_w)
        x = x.permute(0, 3, 5, 1, 2, 4)
        x = x.reshape(-1, c, glb_h, glb_w)
        x = self.global_relation(x)
        x = x.view(n, loc_h, loc_w, c, glb_h, glb_w)
        x = x.permute(0, 4, 5, 3, 1, 2)
        x = x.reshape(-1, c, loc_h, loc_w)
        x = self.local_relation(x)
        x = x.view(n, glb_h, glb_w, c, loc_h, loc_w)
        x = x.permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(n, c, glb_h * loc_h, glb_w * loc_w)
        if pad_h > 0 or pad_w > 0:
            x = x[:, :, pad_h // 2:pad_h // 2 + h, pad_w // 2:pad_w // 2 + w]
        x = self.out_conv(torch.cat([x, residual], dim=1))
        return self.cls_seg(x)


# ---- APCNet -----------------------------------------------------------------------------------------
class ACM(nn.Module):
    """Follows ACM in mmseg/models/decode_heads/apc_head.py: pooled_redu_conv on adaptive_avg_pool2d(x, s),
    input_redu_conv, affinity = sigmoid(gla(x + resize(global_info(pool(x, 1)), x's size))), z = affinity @
    pooled, residual_conv, relu(z + x), fusion_conv."""

    def __init__(self, pool_scale, fusion, in_channels, channels):
        super().__init__()
        self.pool_scale = pool_scale
        self.fusion = fusion
        self.channels = channels
        self.pooled_redu_conv = ConvModule(in_channels, channels, 1)
        self.input_redu_conv = ConvModule(in_channels, channels, 1)
        self.global_info = ConvModule(channels, channels, 1)
        self.gla = nn.Conv2d(channels, pool_scale ** 2, 1, 1, 0)
        self.residual_conv = ConvModule(channels, channels, 1)
        if fusion:
            self.fusion_conv = ConvModule(channels, channels, 1)

    def forward(self, x):
        pooled_x = F.adaptive_avg_pool2d(x, self.pool_scale)
        x = self.input_redu_conv(x)
        pooled_x = self.pooled_redu_conv(pooled_x)
        batch_size = x.size(0)
        pooled_x = pooled_x.view(batch_size, self.channels, -1).permute(0, 2, 1).contiguous()
        affinity_matrix = self.gla(x + resize(self.global_info(F.adaptive_avg_pool2d(x, 1)), size=x.shape[2:])
                                   ).permute(0, 2, 3, 1).reshape(batch_size, -1, self.pool_scale ** 2)
        affinity_matrix = torch.sigmoid(affinity_matrix)
        z_out = torch.matmul(affinity_matrix, pooled_x)
        z_out = z_out.permute(0, 2, 1).contiguous()
        z_out = z_out.view(batch_size, self.channels, x.size(2), x.size(3))
        z_out = self.residual_conv(z_out)
        z_out = F.relu(z_out + x)
        if self.fusion:
            z_out = self.fusion_conv(z_out)
        return z_out


class APCHead(BaseDecodeHead):
    """Follows APCHead in mmseg/models/decode_heads/apc_head.py: [x] + [ACM_s(x) for s], concatenated,
    bottleneck (3x3 ConvModule), cls_seg."""

    def __init__(self, pool_scales=(1, 2, 3, 6), fusion=True, **kwargs):
        super().__init__(**kwargs)
        self.pool_scales = pool_scales
        self.acm_modules = nn.ModuleList(ACM(s, fusion, self.in_channels, self.channels) for s in pool_scales)
        self.bottleneck = ConvModule(self.in_channels + len(pool_scales) * self.channels, self.channels, 3, padding=1)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        acm_outs = [x] + [acm_module(x) for acm_module in self.acm_modules]
        output = self.bottleneck(torch.cat(acm_outs, dim=1))
        return self.cls_seg(output)


# ---- ANN --------------------------------------------------------------------------------------------
class PPMConcat(nn.ModuleList):
    """Follows PPMConcat in mmseg/models/decode_heads/ann_head.py."""

    def __init__(self, pool_scales=(1, 3, 6, 8)):
        super().__init__([nn.AdaptiveAvgPool2d(pool_scale) for pool_scale in pool_scales])

    def forward(self, feats):
        ppm_outs = []
        for ppm in self:
            ppm_out = ppm(feats)
            ppm_outs.append(ppm_out.view(*feats.shape[:2], -1))
        return torch.cat(ppm_outs, dim=2)


class FullSelfAttentionBlock(SelfAttentionBlock):
    """``SelfAttentionBlock`` with mmseg's ``init_weights``: a plain (not ConvModule) ``out_project``
    starts at zero."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.out_project is not None and not isinstance(self.out_project, ConvModule):
            nn.init.constant_(self.out_project.weight, 0)
            nn.init.constant_(self.out_project.bias, 0)


class ANNSelfAttentionBlock(FullSelfAttentionBlock):
    """Follows SelfAttentionBlock in mmseg/models/decode_heads/ann_head.py."""

    def __init__(self, low_in_channels, high_in_channels, channels, out_channels, share_key_query, query_scale,
                 key_pool_scales):
        key_psp = PPMConcat(key_pool_scales)
        query_downsample = nn.MaxPool2d(kernel_size=query_scale) if query_scale > 1 else None
        super().__init__(key_in_channels=low_in_channels, query_in_channels=high_in_channels, channels=channels,
                         out_channels=out_channels, share_key_query=share_key_query,
                         query_downsample=query_downsample, key_downsample=key_psp, key_query_num_convs=1,
                         key_query_norm=True, value_out_num_convs=1, value_out_norm=False, matmul_norm=True,
                         with_out=True)


class AFNB(nn.Module):
    """Follows AFNB in mmseg/models/decode_heads/ann_head.py (bottleneck: ConvModule, act_cfg=None)."""

    def __init__(self, low_in_channels, high_in_channels, channels, out_channels, query_scales, key_pool_scales):
        super().__init__()
        self.stages = nn.ModuleList([
            ANNSelfAttentionBlock(low_in_channels, high_in_channels, channels, out_channels, False, query_scale,
                                  key_pool_scales) for query_scale in query_scales])
        self.bottleneck = ConvModule(out_channels + high_in_channels, out_channels, 1, act=False)

    def forward(self, low_feats, high_feats):
        priors = [stage(high_feats, low_feats) for stage in self.stages]
        context = torch.stack(priors, dim=0).sum(dim=0)
        return self.bottleneck(torch.cat([context, high_feats], 1))


class APNB(nn.Module):
    """Follows APNB in mmseg/models/decode_heads/ann_head.py."""

    def __init__(self, in_channels, channels, out_channels, query_scales, key_pool_scales):
        super().__init__()
        self.stages = nn.ModuleList([
            ANNSelfAttentionBlock(in_channels, in_channels, channels, out_channels, True, query_scale,
                                  key_pool_scales) for query_scale in query_scales])
        self.bottleneck = ConvModule(2 * in_channels, out_channels, 1)

    def forward(self, feats):
        priors = [stage(feats, feats) for stage in self.stages]
        context = torch.stack(priors, dim=0).sum(dim=0)
        return self.bottleneck(torch.cat([context, feats], 1))


class ANNHead(BaseDecodeHead):
    """Follows ANNHead in mmseg/models/decode_heads/ann_head.py: input_transform='multiple_select'
    (in_index [2, 3]: c4 low, c5 high), fusion -> dropout -> bottleneck (3x3) -> context -> cls_seg."""

    def __init__(self, project_channels, query_scales=(1,), key_pool_scales=(1, 3, 6, 8), in_index=(2, 3),
                 **kwargs):
        super().__init__(in_index=list(in_index), **kwargs)
        assert len(self.in_channels) == 2
        low_in_channels, high_in_channels = self.in_channels
        self.project_channels = project_channels
        self.fusion = AFNB(low_in_channels, high_in_channels, project_channels, high_in_channels, query_scales,
                           key_pool_scales)
        self.bottleneck = ConvModule(high_in_channels, self.channels, 3, padding=1)
        self.context = APNB(self.channels, project_channels, self.channels, query_scales, key_pool_scales)

    def _transform_inputs(self, inputs):
        return [inputs[i] for i in self.in_index]

    def forward(self, inputs):
        low_feats, high_feats = self._transform_inputs(inputs)
        output = self.fusion(low_feats, high_feats)
        output = self.dropout(output)
        output = self.bottleneck(output)
        output = self.context(output)
        return self.cls_seg(output)


# ---- OCR -------------------------------------------------------------------------------------------
class SpatialGatherModule(nn.Module):
    """Follows SpatialGatherModule in mmseg/models/decode_heads/ocr_head.py."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, feats, probs):
        batch_size, num_classes, height, width = probs.size()
        channels = feats.size(1)
        probs = probs.view(batch_size, num_classes, -1)
        feats = feats.view(batch_size, channels, -1).permute(0, 2, 1)
        probs = F.softmax(self.scale * probs, dim=2)
        ocr_context = torch.matmul(probs, feats)
        return ocr_context.permute(0, 2, 1).contiguous().unsqueeze(3)


class ObjectAttentionBlock(SelfAttentionBlock):
    """Follows ObjectAttentionBlock in mmseg/models/decode_heads/ocr_head.py (the scale 1 path: no query
    down-sampling): SelfAttentionBlock with two 1x1 ConvModules for key and query, one for value and out,
    matmul_norm, then a 1x1 ConvModule bottleneck on cat([context, query_feats])."""

    def __init__(self, in_channels, channels, scale):
        assert scale == 1
        super().__init__(key_in_channels=in_channels, query_in_channels=in_channels, channels=channels,
                         out_channels=in_channels, share_key_query=False, query_downsample=None,
                         key_downsample=None, key_query_num_convs=2, value_out_num_convs=1, key_query_norm=True,
                         value_out_norm=True, matmul_norm=True, with_out=True)
        self.bottleneck = ConvModule(in_channels * 2, in_channels, 1)

    def forward(self, query_feats, key_feats):
        context = super().forward(query_feats, key_feats)
        return self.bottleneck(torch.cat([context, query_feats], dim=1))


class OCRHead(BaseDecodeHead):
    """Follows OCRHead in mmseg/models/decode_heads/ocr_head.py (a BaseCascadeDecodeHead: forward(inputs,
    prev_output)): bottleneck (3x3) on c5, spatial gather with the previous head's logits, object
    attention block, cls_seg."""

    def __init__(self, ocr_channels, scale=1, **kwargs):
        super().__init__(**kwargs)
        self.ocr_channels = ocr_channels
        self.scale = scale
        self.object_context_block = ObjectAttentionBlock(self.channels, self.ocr_channels, self.scale)
        self.spatial_gather_module = SpatialGatherModule(self.scale)
        self.bottleneck = ConvModule(self.in_channels, self.channels, 3, padding=1)

    def forward(self, inputs, prev_output):
        x = self._transform_inputs(inputs)
        feats = self.bottleneck(x)
        context = self.spatial_gather_module(feats, prev_output)
        object_context = self.object_context_block(feats, context)
        return self.cls_seg(object_context)


class OCRNetCascade(nn.Module):
    """mmseg's CascadeEncoderDecoder decode path for configs/_base_/models/ocrnet_r50-d8.py (num_stages 2):
    FCNHead(in_index=2, num_convs=1, concat_input=False) gives the region logits, OCRHead(in_index=3) reads
    them. Returns (ocr logits, region logits), the two outputs trained 1.0 / 0.4."""

    def __init__(self, in_channels, channels, ocr_channels, region_channels, num_classes, dropout_ratio=0.1):
        super().__init__()
        self.fcn = FCNHead(num_convs=1, concat_input=False, in_channels=in_channels[2], channels=region_channels,
                           num_classes=num_classes, dropout_ratio=dropout_ratio, in_index=2)
        self.ocr = OCRHead(ocr_channels=ocr_channels, in_channels=in_channels[3], channels=channels,
                           num_classes=num_classes, dropout_ratio=dropout_ratio, in_index=3)

    def forward(self, inputs):
        regions = self.fcn(inputs)
        return self.ocr(inputs, regions), regions


# ---- EncNet -----------------------------------------------------------------------------------------
class Encoding(nn.Module):
    """Follows mmseg/models/utils/encoding.py: the expanded (N, HW, K, C) residuals, as written there."""

    def __init__(self, channels, num_codes):
        super().__init__()
        self.channels, self.num_codes = channels, num_codes
        std = 1.0 / ((num_codes * channels) ** 0.5)
        self.codewords = nn.Parameter(torch.empty(num_codes, channels, dtype=torch.float).uniform_(-std, std))
        self.scale = nn.Parameter(torch.empty(num_codes, dtype=torch.float).uniform_(-1, 0))

    @staticmethod
    def scaled_l2(x, codewords, scale):
        num_codes, channels = codewords.size()
        batch_size = x.size(0)
        reshaped_scale = scale.view((1, 1, num_codes))
        expanded_x = x.unsqueeze(2).expand((batch_size, x.size(1), num_codes, channels))
        reshaped_codewords = codewords.view((1, 1, num_codes, channels))
        return reshaped_scale * (expanded_x - reshaped_codewords).pow(2).sum(dim=3)

    @staticmethod
    def aggregate(assignment_weights, x, codewords):
        num_codes, channels = codewords.size()
        reshaped_codewords = codewords.view((1, 1, num_codes, channels))
        batch_size = x.size(0)
        expanded_x = x.unsqueeze(2).expand((batch_size, x.size(1), num_codes, channels))
        return (assignment_weights.unsqueeze(3) * (expanded_x - reshaped_codewords)).sum(dim=1)

    def forward(self, x):
        assert x.dim() == 4 and x.size(1) == self.channels
        batch_size = x.size(0)
        x = x.view(batch_size, self.channels, -1).transpose(1, 2).contiguous()
        assignment_weights = F.softmax(self.scaled_l2(x, self.codewords, self.scale), dim=2)
        return self.aggregate(assignment_weights, x, self.codewords)


class EncModule(nn.Module):
    """Follows EncModule in mmseg/models/decode_heads/enc_head.py (the head's BN turned into BN1d)."""

    def __init__(self, in_channels, num_codes):
        super().__init__()
        self.encoding_project = ConvModule(in_channels, in_channels, 1)
        self.encoding = nn.Sequential(Encoding(channels=in_channels, num_codes=num_codes), nn.BatchNorm1d(num_codes),
                                      nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Linear(in_channels, in_channels), nn.Sigmoid())

    def forward(self, x):
        encoding_projection = self.encoding_project(x)
        encoding_feat = self.encoding(encoding_projection).mean(dim=1)
        batch_size, channels, _, _ = x.size()
        gamma = self.fc(encoding_feat)
        y = gamma.view(batch_size, channels, 1, 1)
        output = F.relu_(x + x * y)
        return encoding_feat, output


class EncHead(BaseDecodeHead):
    """Follows EncHead in mmseg/models/decode_heads/enc_head.py (input_transform='multiple_select'):
    bottleneck on the last input, optional laterals (resized, then fused), EncModule, cls_seg, se_layer;
    ``se_loss`` is its loss_by_feat's SE term (one-hot presence by histc, sigmoid BCE, weight 0.2)."""

    def __init__(self, num_codes=32, use_se_loss=True, add_lateral=False, se_loss_weight=0.2, **kwargs):
        super().__init__(**kwargs)
        self.use_se_loss, self.add_lateral, self.se_loss_weight = use_se_loss, add_lateral, se_loss_weight
        self.bottleneck = ConvModule(self.in_channels[-1], self.channels, 3, padding=1)
        if add_lateral:
            self.lateral_convs = nn.ModuleList(ConvModule(c, self.channels, 1) for c in self.in_channels[:-1])
            self.fusion = ConvModule(len(self.in_channels) * self.channels, self.channels, 3, padding=1)
        self.enc_module = EncModule(self.channels, num_codes=num_codes)
        if use_se_loss:
            self.se_layer = nn.Linear(self.channels, self.num_classes)

    def _transform_inputs(self, inputs):
        return [inputs[i] for i in self.in_index]

    def forward(self, inputs):
        inputs = self._transform_inputs(inputs)
        feat = self.bottleneck(inputs[-1])
        if self.add_lateral:
            laterals = [resize(lateral_conv(inputs[i]), size=feat.shape[2:], mode="bilinear",
                               align_corners=self.align_corners) for i, lateral_conv in enumerate(self.lateral_convs)]
            feat = self.fusion(torch.cat([feat, *laterals], 1))
        encode_feat, output = self.enc_module(feat)
        output = self.cls_seg(output)
        if self.use_se_loss:
            return output, self.se_layer(encode_feat)
        return output

    @staticmethod
    def _convert_to_onehot_labels(seg_label, num_classes):
        batch_size = seg_label.size(0)
        onehot_labels = seg_label.new_zeros((batch_size, num_classes))
        for i in range(batch_size):
            hist = seg_label[i].float().histc(bins=num_classes, min=0, max=num_classes - 1)
            onehot_labels[i] = hist > 0
        return onehot_labels

    def se_loss(self, se_seg_logit, seg_label):
        """mmseg's CrossEntropyLoss(use_sigmoid=True, loss_weight=0.2): mean BCE over images and classes."""
        target = self._convert_to_onehot_labels(seg_label, self.num_classes)
        return self.se_loss_weight * F.binary_cross_entropy_with_logits(se_seg_logit, target.to(se_seg_logit.dtype))


# ---- DMNet ------------------------------------------------------------------------------------------
class DCM(nn.Module):
    """Follows DCM in mmseg/models/decode_heads/dm_head.py."""

    def __init__(self, filter_size, fusion, in_channels, channels):
        super().__init__()
        self.filter_size, self.fusion = filter_size, fusion
        self.filter_gen_conv = nn.Conv2d(in_channels, channels, 1, 1, 0)
        self.input_redu_conv = ConvModule(in_channels, channels, 1)
        self.norm = nn.BatchNorm2d(channels)
        self.activate = nn.ReLU(inplace=True)
        if fusion:
            self.fusion_conv = ConvModule(channels, channels, 1)

    def forward(self, x):
        generated_filter = self.filter_gen_conv(F.adaptive_avg_pool2d(x, self.filter_size))
        x = self.input_redu_conv(x)
        b, c, h, w = x.shape
        x = x.view(1, b * c, h, w)
        generated_filter = generated_filter.view(b * c, 1, self.filter_size, self.filter_size)
        pad = (self.filter_size - 1) // 2
        if (self.filter_size - 1) % 2 == 0:
            p2d = (pad, pad, pad, pad)
        else:
            p2d = (pad + 1, pad, pad + 1, pad)
        x = F.pad(input=x, pad=p2d, mode="constant", value=0)
        output = F.conv2d(input=x, weight=generated_filter, groups=b * c)
        output = output.view(b, c, h, w)
        output = self.activate(self.norm(output))
        if self.fusion:
            output = self.fusion_conv(output)
        return output


class DMHead(BaseDecodeHead):
    """Follows DMHead in mmseg/models/decode_heads/dm_head.py."""

    def __init__(self, filter_sizes=(1, 3, 5, 7), fusion=False, **kwargs):
        super().__init__(**kwargs)
        self.dcm_modules = nn.ModuleList(DCM(k, fusion, self.in_channels, self.channels) for k in filter_sizes)
        self.bottleneck = ConvModule(self.in_channels + len(filter_sizes) * self.channels, self.channels, 3, padding=1)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        dcm_outs = [x]
        for dcm_module in self.dcm_modules:
            dcm_outs.append(dcm_module(x))
        output = self.bottleneck(torch.cat(dcm_outs, dim=1))
        return self.cls_seg(output)


# ---- Hamburger ---------------------------------------------------------------------------------------
class NMF2D(nn.Module):
    """Follows Matrix_Decomposition_2D_Base + NMF2D in mmseg/models/decode_heads/ham_head.py (rand_init=True).
    ``one_step``: Enjoy-Hamburger's ``@torch.no_grad()`` on local_inference (the paper's one-step gradient);
    mmseg has none. The bases are cast to the input's dtype (mmseg's are float32 only)."""

    def __init__(self, MD_S=1, MD_R=64, train_steps=6, eval_steps=7, inv_t=100, rand_init=True, one_step=False):  # noqa: N803
        super().__init__()
        self.S, self.R = MD_S, MD_R
        self.train_steps, self.eval_steps = train_steps, eval_steps
        self.inv_t = 1  # NMF2D overrides it
        self.rand_init, self.one_step = rand_init, one_step

    def _build_bases(self, B, S, D, R, device=None):  # noqa: N803
        bases = torch.rand((B * S, D, R)).to(device)
        return F.normalize(bases, dim=1)

    def local_step(self, x, bases, coef):
        numerator = torch.bmm(x.transpose(1, 2), bases)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        coef = coef * numerator / (denominator + 1e-6)
        numerator = torch.bmm(x, coef)
        denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
        bases = bases * numerator / (denominator + 1e-6)
        return bases, coef

    def local_inference(self, x, bases):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.one_step):
            coef = torch.bmm(x.transpose(1, 2), bases)
            coef = F.softmax(self.inv_t * coef, dim=-1)
            steps = self.train_steps if self.training else self.eval_steps
            for _ in range(steps):
                bases, coef = self.local_step(x, bases, coef)
        return bases, coef

    def compute_coef(self, x, bases, coef):
        numerator = torch.bmm(x.transpose(1, 2), bases)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        return coef * numerator / (denominator + 1e-6)

    def forward(self, x):
        B, C, H, W = x.shape  # noqa: N806
        D = C // self.S  # noqa: N806
        N = H * W  # noqa: N806
        x = x.view(B * self.S, D, N)
        bases = self._build_bases(B, self.S, D, self.R, device=x.device).to(x.dtype)
        bases, coef = self.local_inference(x, bases)
        coef = self.compute_coef(x, bases, coef)
        x = torch.bmm(bases, coef.transpose(1, 2))
        return x.view(B, C, H, W)


class Hamburger(nn.Module):
    """Follows Hamburger in mmseg/models/decode_heads/ham_head.py (norm: BN here)."""

    def __init__(self, ham_channels=512, ham_kwargs=None, one_step=False):
        super().__init__()
        self.ham_in = ConvModule(ham_channels, ham_channels, 1, norm=False, act=False)
        self.ham = NMF2D(**(ham_kwargs or {}), one_step=one_step)
        self.ham_out = ConvModule(ham_channels, ham_channels, 1, act=False)

    def forward(self, x):
        enjoy = self.ham_in(x)
        enjoy = F.relu(enjoy, inplace=True)
        enjoy = self.ham(enjoy)
        enjoy = self.ham_out(enjoy)
        return F.relu(x + enjoy, inplace=True)


class LightHamHead(BaseDecodeHead):
    """Follows LightHamHead in mmseg/models/decode_heads/ham_head.py (input_transform='multiple_select':
    ``in_index`` a list; every input resized to the first's size and concatenated)."""

    def __init__(self, ham_channels=512, ham_kwargs=None, one_step=False, **kwargs):
        super().__init__(**kwargs)
        self.ham_channels = ham_channels
        self.squeeze = ConvModule(sum(self.in_channels), ham_channels, 1)
        self.hamburger = Hamburger(ham_channels, ham_kwargs, one_step=one_step)
        self.align = ConvModule(ham_channels, self.channels, 1)

    def _transform_inputs(self, inputs):
        return [inputs[i] for i in self.in_index]

    def forward(self, inputs):
        inputs = self._transform_inputs(inputs)
        inputs = [resize(level, size=inputs[0].shape[2:], mode="bilinear", align_corners=self.align_corners)
                  for level in inputs]
        x = self.squeeze(torch.cat(inputs, dim=1))
        x = self.hamburger(x)
        return self.cls_seg(self.align(x))
