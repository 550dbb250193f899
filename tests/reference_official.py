"""Faithful re-implementations of the authors' official attention modules, for equivalence tests.

Each class below was written from the official source named in its docstring (not from segattn),
in plain PyTorch, keeping the official class and attribute names so that the parameter map to our
modules (tests/test_reference_official.py) is readable. Only the forward and the parameter layout
matter here: initialisation is left at PyTorch's defaults because the tests overwrite every
parameter and buffer. Not collected by pytest (no ``test_`` prefix).

Sources (repository / path):

- OCNet       openseg-group/OCNet.pytorch  oc_module/base_oc_block.py, oc_module/pyramid_oc_block.py,
                                           oc_module/asp_oc_block.py, network/resnet101_base_oc.py,
                                           network/resnet101_pyramid_oc.py, network/resnet101_asp_oc.py
- SENet       hujie-frank/SENet            models/SE-ResNet-50.prototxt (the authors' Caffe model)
- CBAM        Jongchan/attention-module    MODELS/cbam.py
- SKNet       implus/SKNet                 models/sknet50.prototxt (the authors' Caffe model)
- ECA-Net     BangguWu/ECANet              models/eca_module.py (+ the paper's Eq. 12 for k)
- SGE         implus/PytorchInsight        classification/models/imagenet/resnet_sge.py
- GCNet       xvjiarui/GCNet               mmdet/ops/ct/context_block.py (= open-mmlab/mmdetection
                                           mmdet/ops/gcb/context_block.py)
- Non-local   open-mmlab/mmcv              mmcv/cnn/bricks/non_local.py (the authors' code is Caffe2)
- CCNet       speedinghzl/CCNet            cc_attention/functions.py (pure-PyTorch version, INF diagonal)
- EMANet      XiaLiPKU/EMANet              network.py (EMAU)
- DANet       junfu1115/DANet              encoding/nn/da_att.py (= encoding/nn/attention.py)
- CoordAtt    houqb/CoordAttention         coordatt.py
- Axial       csrhddlam/axial-deeplab      lib/models/axialnet.py (AxialAttention)
- EANet       MenghaoGuo/EANet             model_torch.py (External_attention, the EANet head)
- PSA         xmu-xiaoma666/External-Attention-pytorch  model/attention/PolarizedSelfAttention.py
- Triplet     landskape-ai/triplet-attention  MODELS/triplet_attention.py
- BAM         Jongchan/attention-module    MODELS/bam.py
- SimAM       ZjjConan/SimAM               networks/attentions/simam_module.py
- SA-Net      wofmanaf/SA-Net              models/sa_resnet.py (sa_layer)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ==================================================================================================
# OCNet (openseg-group/OCNet.pytorch)
# ==================================================================================================
class InPlaceABNSync(nn.Module):
    """InPlaceABNSync(C) = BatchNorm followed by its default activation, leaky ReLU of slope 0.01
    (``activation='none'`` is the plain BN the OCNet files alias as ``BatchNorm2d``). Eval-mode
    function only; the synchronisation is irrelevant on one process."""

    def __init__(self, num_features, activation="leaky_relu", slope=0.01, eps=1e-5):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps)
        self.activation = activation
        self.slope = slope

    def forward(self, x):
        x = self.bn(x)
        if self.activation == "leaky_relu":
            x = F.leaky_relu(x, self.slope)
        return x


class _SelfAttentionBlock(nn.Module):
    """oc_module/base_oc_block.py ``_SelfAttentionBlock`` (= ``SelfAttentionBlock2D``)."""

    def __init__(self, in_channels, key_channels, value_channels, out_channels=None, scale=1):
        super().__init__()
        self.scale = scale
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.pool = nn.MaxPool2d(kernel_size=(scale, scale))
        self.f_key = nn.Sequential(
            nn.Conv2d(self.in_channels, self.key_channels, kernel_size=1, stride=1, padding=0),
            InPlaceABNSync(self.key_channels),
        )
        self.f_query = self.f_key
        self.f_value = nn.Conv2d(self.in_channels, self.value_channels, kernel_size=1, stride=1, padding=0)
        self.W = nn.Conv2d(self.value_channels, self.out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        batch_size, h, w = x.size(0), x.size(2), x.size(3)
        if self.scale > 1:
            x = self.pool(x)
        value = self.f_value(x).view(batch_size, self.value_channels, -1)
        value = value.permute(0, 2, 1)
        query = self.f_query(x).view(batch_size, self.key_channels, -1)
        query = query.permute(0, 2, 1)
        key = self.f_key(x).view(batch_size, self.key_channels, -1)
        sim_map = torch.matmul(query, key)
        sim_map = (self.key_channels ** -.5) * sim_map
        sim_map = F.softmax(sim_map, dim=-1)
        context = torch.matmul(sim_map, value)
        context = context.permute(0, 2, 1).contiguous()
        context = context.view(batch_size, self.value_channels, *x.size()[2:])
        context = self.W(context)
        if self.scale > 1:
            # torch 0.4 branch: F.upsample(..., mode='bilinear', align_corners=True)
            context = F.interpolate(context, size=(h, w), mode="bilinear", align_corners=True)
        return context


class BaseOC_Module(nn.Module):
    """oc_module/base_oc_block.py ``BaseOC_Module``."""

    def __init__(self, in_channels, out_channels, key_channels, value_channels, dropout, sizes=(1,)):
        super().__init__()
        self.stages = nn.ModuleList(
            [_SelfAttentionBlock(in_channels, key_channels, value_channels, out_channels, size) for size in sizes])
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, kernel_size=1, padding=0),
            InPlaceABNSync(out_channels),
            nn.Dropout2d(dropout),
        )

    def forward(self, feats):
        priors = [stage(feats) for stage in self.stages]
        context = priors[0]
        for i in range(1, len(priors)):
            context += priors[i]
        return self.conv_bn_dropout(torch.cat([context, feats], 1))


class BaseOC_Context_Module(nn.Module):
    """oc_module/base_oc_block.py ``BaseOC_Context_Module`` (context only, conv1x1 + ABN)."""

    def __init__(self, in_channels, out_channels, key_channels, value_channels, dropout, sizes=(1,)):
        super().__init__()
        self.stages = nn.ModuleList(
            [_SelfAttentionBlock(in_channels, key_channels, value_channels, out_channels, size) for size in sizes])
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0),
            InPlaceABNSync(out_channels),
        )

    def forward(self, feats):
        priors = [stage(feats) for stage in self.stages]
        context = priors[0]
        for i in range(1, len(priors)):
            context += priors[i]
        return self.conv_bn_dropout(context)


class _PyramidSelfAttentionBlock(nn.Module):
    """oc_module/pyramid_oc_block.py ``_PyramidSelfAttentionBlock``: the official region loop
    (``step = size // scale``, the last region takes the remainder)."""

    def __init__(self, in_channels, key_channels, value_channels, out_channels=None, scale=1):
        super().__init__()
        self.scale = scale
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.f_key = nn.Sequential(
            nn.Conv2d(self.in_channels, self.key_channels, kernel_size=1, stride=1, padding=0),
            InPlaceABNSync(self.key_channels),
        )
        self.f_query = self.f_key
        self.f_value = nn.Conv2d(self.in_channels, self.value_channels, kernel_size=1, stride=1, padding=0)
        self.W = nn.Conv2d(self.value_channels, self.out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        batch_size, c, h, w = x.size(0), x.size(1), x.size(2), x.size(3)
        local_x = []
        local_y = []
        step_h, step_w = h // self.scale, w // self.scale
        for i in range(0, self.scale):
            for j in range(0, self.scale):
                start_x, start_y = i * step_h, j * step_w
                end_x, end_y = min(start_x + step_h, h), min(start_y + step_w, w)
                if i == (self.scale - 1):
                    end_x = h
                if j == (self.scale - 1):
                    end_y = w
                local_x += [start_x, end_x]
                local_y += [start_y, end_y]

        value = self.f_value(x)
        query = self.f_query(x)
        key = self.f_key(x)

        local_list = []
        local_block_cnt = 2 * self.scale * self.scale
        for i in range(0, local_block_cnt, 2):
            value_local = value[:, :, local_x[i]:local_x[i + 1], local_y[i]:local_y[i + 1]]
            query_local = query[:, :, local_x[i]:local_x[i + 1], local_y[i]:local_y[i + 1]]
            key_local = key[:, :, local_x[i]:local_x[i + 1], local_y[i]:local_y[i + 1]]
            h_local, w_local = value_local.size(2), value_local.size(3)
            value_local = value_local.contiguous().view(batch_size, self.value_channels, -1)
            value_local = value_local.permute(0, 2, 1)
            query_local = query_local.contiguous().view(batch_size, self.key_channels, -1)
            query_local = query_local.permute(0, 2, 1)
            key_local = key_local.contiguous().view(batch_size, self.key_channels, -1)
            sim_map = torch.matmul(query_local, key_local)
            sim_map = (self.key_channels ** -.5) * sim_map
            sim_map = F.softmax(sim_map, dim=-1)
            context_local = torch.matmul(sim_map, value_local)
            context_local = context_local.permute(0, 2, 1).contiguous()
            context_local = context_local.view(batch_size, self.value_channels, h_local, w_local)
            local_list.append(context_local)

        context_list = []
        for i in range(0, self.scale):
            row_tmp = []
            for j in range(0, self.scale):
                row_tmp.append(local_list[j + i * self.scale])
            context_list.append(torch.cat(row_tmp, 3))
        context = torch.cat(context_list, 2)
        return self.W(context)


class Pyramid_OC_Module(nn.Module):
    """oc_module/pyramid_oc_block.py ``Pyramid_OC_Module`` (key C/2, value C per level; ``up_dr``)."""

    def __init__(self, in_channels, out_channels, dropout, sizes=(1,)):
        super().__init__()
        self.group = len(sizes)
        self.stages = nn.ModuleList([
            _PyramidSelfAttentionBlock(in_channels, in_channels // 2, in_channels, out_channels, size)
            for size in sizes])
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels * self.group, out_channels, kernel_size=1, padding=0),
            InPlaceABNSync(out_channels),
            nn.Dropout2d(dropout),
        )
        self.up_dr = nn.Sequential(
            nn.Conv2d(in_channels, in_channels * self.group, kernel_size=1, padding=0),
            InPlaceABNSync(in_channels * self.group),
        )

    def forward(self, feats):
        priors = [stage(feats) for stage in self.stages]
        context = [self.up_dr(feats)]
        for i in range(0, len(priors)):
            context += [priors[i]]
        return self.conv_bn_dropout(torch.cat(context, 1))


class ASP_OC_Module(nn.Module):
    """oc_module/asp_oc_block.py ``ASP_OC_Module`` (features -> 2 * out_features)."""

    def __init__(self, features, out_features=256, dilations=(12, 24, 36)):
        super().__init__()
        self.context = nn.Sequential(
            nn.Conv2d(features, out_features, kernel_size=3, padding=1, dilation=1, bias=True),
            InPlaceABNSync(out_features),
            BaseOC_Context_Module(in_channels=out_features, out_channels=out_features,
                                  key_channels=out_features // 2, value_channels=out_features,
                                  dropout=0, sizes=([2])))
        self.conv2 = nn.Sequential(
            nn.Conv2d(features, out_features, kernel_size=1, padding=0, dilation=1, bias=False),
            InPlaceABNSync(out_features))
        self.conv3 = nn.Sequential(
            nn.Conv2d(features, out_features, kernel_size=3, padding=dilations[0], dilation=dilations[0], bias=False),
            InPlaceABNSync(out_features))
        self.conv4 = nn.Sequential(
            nn.Conv2d(features, out_features, kernel_size=3, padding=dilations[1], dilation=dilations[1], bias=False),
            InPlaceABNSync(out_features))
        self.conv5 = nn.Sequential(
            nn.Conv2d(features, out_features, kernel_size=3, padding=dilations[2], dilation=dilations[2], bias=False),
            InPlaceABNSync(out_features))
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(out_features * 5, out_features * 2, kernel_size=1, padding=0, dilation=1, bias=False),
            InPlaceABNSync(out_features * 2),
            nn.Dropout2d(0.1),
        )

    def forward(self, x):
        feat1 = self.context(x)
        feat2 = self.conv2(x)
        feat3 = self.conv3(x)
        feat4 = self.conv4(x)
        feat5 = self.conv5(x)
        out = torch.cat((feat1, feat2, feat3, feat4, feat5), 1)
        return self.conv_bn_dropout(out)


class OCNetHead(nn.Module):
    """The part of network/resnet101_{base,pyramid,asp}_oc.py after layer4 (``dsn`` aside):

    - base:    context = [Conv2d(2048, 512, 3, padding=1), InPlaceABNSync(512),
                          BaseOC_Module(512, 512, 256, 256, 0.05, [1])]
    - pyramid: layer5 = [Conv2d(2048, 512, 3, padding=1), BatchNorm2d(512)] where the file's
               ``BatchNorm2d = partial(InPlaceABNSync, activation='none')``: NO leaky ReLU here;
               context = Pyramid_OC_Module(512, 512, 0.05, [1, 2, 3, 6])
    - asp:     context = [Conv2d(2048, 512, 3, padding=1), InPlaceABNSync(512), ASP_OC_Module(512, 256)]

    then ``cls`` = Conv2d(512, num_classes, 1) with bias. Widths are parameters here (2048 ->
    ``in_channels``, 512 -> ``channels``) so the test runs small.
    """

    def __init__(self, variant, in_channels, channels, num_classes, sizes=(1, 2, 3, 6), dilations=(12, 24, 36)):
        super().__init__()
        self.variant = variant
        if variant == "base":
            self.context = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1),
                InPlaceABNSync(channels),
                BaseOC_Module(in_channels=channels, out_channels=channels, key_channels=channels // 2,
                              value_channels=channels // 2, dropout=0.05, sizes=([1])))
        elif variant == "pyramid":
            self.layer5 = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1),
                InPlaceABNSync(channels, activation="none"))
            self.context = Pyramid_OC_Module(in_channels=channels, out_channels=channels, dropout=0.05, sizes=sizes)
        elif variant == "asp":
            self.context = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1),
                InPlaceABNSync(channels),
                ASP_OC_Module(channels, channels // 2, dilations=dilations))
        else:
            raise ValueError(variant)
        self.cls = nn.Conv2d(channels, num_classes, kernel_size=1, stride=1, padding=0, bias=True)

    def forward(self, x):
        if self.variant == "pyramid":
            x = self.layer5(x)
        return self.cls(self.context(x))


# ==================================================================================================
# SENet (hujie-frank/SENet, models/SE-ResNet-50.prototxt)
# ==================================================================================================
class SECaffe(nn.Module):
    """One SE unit of the authors' Caffe model, e.g. conv2_1: ``conv2_1_global_pool`` (AVE, global)
    -> ``conv2_1_1x1_down`` (Convolution 1x1, num_output C/16, bias_term left at Caffe's default
    true) -> ReLU -> ``conv2_1_1x1_up`` (1x1, C, with bias) -> Sigmoid ``conv2_1_prob`` -> ``Axpy``
    (prob * x + shortcut; the shortcut add belongs to the block, so this returns prob * x)."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.down = nn.Conv2d(channels, channels // reduction, kernel_size=1, stride=1, bias=True)
        self.up = nn.Conv2d(channels // reduction, channels, kernel_size=1, stride=1, bias=True)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.up(F.relu(self.down(s))))
        return s * x


# ==================================================================================================
# CBAM (Jongchan/attention-module, MODELS/cbam.py)
# ==================================================================================================
class BasicConv(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 relu=True, bn=True, bias=False):
        super().__init__()
        self.out_channels = out_planes
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class ChannelGate(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16, pool_types=("avg", "max")):
        super().__init__()
        self.gate_channels = gate_channels
        self.mlp = nn.Sequential(
            Flatten(),
            nn.Linear(gate_channels, gate_channels // reduction_ratio),
            nn.ReLU(),
            nn.Linear(gate_channels // reduction_ratio, gate_channels),
        )
        self.pool_types = pool_types

    def forward(self, x):
        channel_att_sum = None
        for pool_type in self.pool_types:
            if pool_type == "avg":
                avg_pool = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                channel_att_raw = self.mlp(avg_pool)
            elif pool_type == "max":
                max_pool = F.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
                channel_att_raw = self.mlp(max_pool)
            else:
                raise NotImplementedError(pool_type)
            channel_att_sum = channel_att_raw if channel_att_sum is None else channel_att_sum + channel_att_raw
        scale = torch.sigmoid(channel_att_sum).unsqueeze(2).unsqueeze(3).expand_as(x)
        return x * scale


class ChannelPool(nn.Module):
    def forward(self, x):
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        kernel_size = 7
        self.compress = ChannelPool()
        self.spatial = BasicConv(2, 1, kernel_size, stride=1, padding=(kernel_size - 1) // 2, relu=False)

    def forward(self, x):
        x_compress = self.compress(x)
        x_out = self.spatial(x_compress)
        scale = torch.sigmoid(x_out)
        return x * scale


class CBAM(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=16, pool_types=("avg", "max"), no_spatial=False):
        super().__init__()
        self.ChannelGate = ChannelGate(gate_channels, reduction_ratio, pool_types)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = SpatialGate()

    def forward(self, x):
        x_out = self.ChannelGate(x)
        if not self.no_spatial:
            x_out = self.SpatialGate(x_out)
        return x_out


# ==================================================================================================
# SKNet (implus/SKNet, models/sknet50.prototxt: the conv2_1 unit)
# ==================================================================================================
class SKCaffe(nn.Module):
    """The selective-kernel part of the authors' Caffe unit conv2_1 (mid width C = 128 there):

    ``3x3g32`` (conv 3x3, group G, pad 1, no bias) + BN + ReLU; ``3x3g32d2`` (conv 3x3, group G,
    dilation 2, pad 2, no bias) + BN + ReLU; ``conv2_1_3x3`` = Eltwise SUM; ``B_global_pool`` (AVE);
    ``B_fc1`` (1x1, d outputs, bias_term false) + BN + ReLU; ``B_fc2`` (1x1, 2C outputs, bias_term
    false); ``B_re`` Reshape (0, 2, -1, 0); ``B_softmax`` axis 1 (over the two branches);
    ``B_slice`` at 1 -> a0, a1; ``scale`` = a0 * branch0; ``B_axpy`` = a1 * branch1 + scale.
    """

    def __init__(self, channels, groups, d):
        super().__init__()
        self.channels = channels
        self.conv3x3g32 = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
        self.conv3x3g32_bn = nn.BatchNorm2d(channels)
        self.conv3x3g32d2 = nn.Conv2d(channels, channels, 3, padding=2, dilation=2, groups=groups, bias=False)
        self.conv3x3g32d2_bn = nn.BatchNorm2d(channels)
        self.B_fc1 = nn.Conv2d(channels, d, 1, bias=False)
        self.B_fc1_bn = nn.BatchNorm2d(d)
        self.B_fc2 = nn.Conv2d(d, 2 * channels, 1, bias=False)

    def forward(self, x):
        b0 = F.relu(self.conv3x3g32_bn(self.conv3x3g32(x)))
        b1 = F.relu(self.conv3x3g32d2_bn(self.conv3x3g32d2(x)))
        u = b0 + b1
        s = F.adaptive_avg_pool2d(u, 1)
        z = F.relu(self.B_fc1_bn(self.B_fc1(s)))
        a = self.B_fc2(z)                                # (N, 2C, 1, 1)
        a = a.reshape(a.shape[0], 2, -1, a.shape[3])     # Reshape dim: 0, 2, -1, 0 -> (N, 2, C, 1)
        a = F.softmax(a, dim=1)                          # Softmax axis 1
        a0, a1 = a[:, 0:1], a[:, 1:2]                    # Slice at 1 along axis 1
        a0 = a0.reshape(a0.shape[0], self.channels, -1, a0.shape[3])  # Reshape (0, C, -1, 0)
        a1 = a1.reshape(a1.shape[0], self.channels, -1, a1.shape[3])
        scale = b0 * a0                                  # Scale (axis 0, no bias)
        return a1 * b1 + scale                           # Axpy


# ==================================================================================================
# ECA-Net (BangguWu/ECANet, models/eca_module.py)
# ==================================================================================================
def eca_k_size(channel, gamma=2, b=1):
    """The paper's Eq. 12, k = |log2(C)/gamma + b/gamma|_odd, as the authors write it in code
    (``t = int(abs((math.log(channel, 2) + b) / gamma)); k = t if t % 2 else t + 1``)."""
    t = int(abs((math.log(channel, 2) + b) / gamma))
    return t if t % 2 else t + 1


class eca_layer(nn.Module):  # noqa: N801 (official name)
    def __init__(self, channel, k_size=3):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        y = self.sigmoid(y)
        return x * y.expand_as(x)


# ==================================================================================================
# SGE (implus/PytorchInsight, classification/models/imagenet/resnet_sge.py)
# ==================================================================================================
class SpatialGroupEnhance(nn.Module):
    def __init__(self, groups=64):
        super().__init__()
        self.groups = groups
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))
        self.sig = nn.Sigmoid()

    def forward(self, x):  # (b, c, h, w)
        b, c, h, w = x.size()
        x = x.view(b * self.groups, -1, h, w)
        xn = x * self.avg_pool(x)
        xn = xn.sum(dim=1, keepdim=True)
        t = xn.view(b * self.groups, -1)
        t = t - t.mean(dim=1, keepdim=True)
        std = t.std(dim=1, keepdim=True) + 1e-5
        t = t / std
        t = t.view(b, self.groups, h, w)
        t = t * self.weight + self.bias
        t = t.view(b * self.groups, 1, h, w)
        x = x * self.sig(t)
        x = x.view(b, c, h, w)
        return x


# ==================================================================================================
# GCNet (xvjiarui/GCNet, mmdet/ops/ct/context_block.py)
# ==================================================================================================
class ContextBlock2d(nn.Module):
    def __init__(self, inplanes, planes, pool, fusions):
        super().__init__()
        assert pool in ["avg", "att"]
        assert all([f in ["channel_add", "channel_mul"] for f in fusions])
        assert len(fusions) > 0, "at least one fusion should be used"
        self.inplanes = inplanes
        self.planes = planes
        self.pool = pool
        self.fusions = fusions
        if "att" in pool:
            self.conv_mask = nn.Conv2d(inplanes, 1, kernel_size=1)
            self.softmax = nn.Softmax(dim=2)
        else:
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
        if "channel_add" in fusions:
            self.channel_add_conv = nn.Sequential(
                nn.Conv2d(self.inplanes, self.planes, kernel_size=1),
                nn.LayerNorm([self.planes, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(self.planes, self.inplanes, kernel_size=1))
        else:
            self.channel_add_conv = None
        if "channel_mul" in fusions:
            self.channel_mul_conv = nn.Sequential(
                nn.Conv2d(self.inplanes, self.planes, kernel_size=1),
                nn.LayerNorm([self.planes, 1, 1]),
                nn.ReLU(inplace=True),
                nn.Conv2d(self.planes, self.inplanes, kernel_size=1))
        else:
            self.channel_mul_conv = None

    def spatial_pool(self, x):
        batch, channel, height, width = x.size()
        if self.pool == "att":
            input_x = x
            input_x = input_x.view(batch, channel, height * width)   # [N, C, H * W]
            input_x = input_x.unsqueeze(1)                            # [N, 1, C, H * W]
            context_mask = self.conv_mask(x)                          # [N, 1, H, W]
            context_mask = context_mask.view(batch, 1, height * width)
            context_mask = self.softmax(context_mask)                 # [N, 1, H * W]
            context_mask = context_mask.unsqueeze(3)                  # [N, 1, H * W, 1]
            context = torch.matmul(input_x, context_mask)             # [N, 1, C, 1]
            context = context.view(batch, channel, 1, 1)
        else:
            context = self.avg_pool(x)
        return context

    def forward(self, x):
        context = self.spatial_pool(x)
        if self.channel_mul_conv is not None:
            channel_mul_term = torch.sigmoid(self.channel_mul_conv(context))
            out = x * channel_mul_term
        else:
            out = x
        if self.channel_add_conv is not None:
            channel_add_term = self.channel_add_conv(context)
            out = out + channel_add_term
        return out


# ==================================================================================================
# Non-local (open-mmlab/mmcv, mmcv/cnn/bricks/non_local.py)
# ==================================================================================================
class ConvModule(nn.Module):
    """mmcv ConvModule as NonLocal uses it: conv (bias='auto': only without a norm) -> norm ('bn')."""

    def __init__(self, in_channels, out_channels, kernel_size, norm=False):
        super().__init__()
        self.with_norm = norm
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        return x


class NonLocal2d(nn.Module):
    """mmcv ``_NonLocalNd`` + ``NonLocal2d`` (modes gaussian, embedded_gaussian, dot_product;
    ``norm_cfg`` BN or None; ``sub_sample`` wraps g and phi with MaxPool2d((2, 2)))."""

    def __init__(self, in_channels, reduction=2, use_scale=True, norm=False, mode="embedded_gaussian",
                 sub_sample=False):
        super().__init__()
        self.in_channels = in_channels
        self.reduction = reduction
        self.use_scale = use_scale
        self.inter_channels = max(in_channels // reduction, 1)
        self.mode = mode
        if mode not in ["gaussian", "embedded_gaussian", "dot_product"]:
            raise ValueError(mode)
        self.g = ConvModule(self.in_channels, self.inter_channels, kernel_size=1)
        self.conv_out = ConvModule(self.inter_channels, self.in_channels, kernel_size=1, norm=norm)
        if self.mode != "gaussian":
            self.theta = ConvModule(self.in_channels, self.inter_channels, kernel_size=1)
            self.phi = ConvModule(self.in_channels, self.inter_channels, kernel_size=1)
        self.sub_sample = sub_sample
        if sub_sample:
            max_pool_layer = nn.MaxPool2d(kernel_size=(2, 2))
            self.g = nn.Sequential(self.g, max_pool_layer)
            if self.mode != "gaussian":
                self.phi = nn.Sequential(self.phi, max_pool_layer)
            else:
                self.phi = max_pool_layer

    def gaussian(self, theta_x, phi_x):
        pairwise_weight = torch.matmul(theta_x, phi_x)
        pairwise_weight = pairwise_weight.softmax(dim=-1)
        return pairwise_weight

    def embedded_gaussian(self, theta_x, phi_x):
        pairwise_weight = torch.matmul(theta_x, phi_x)
        if self.use_scale:
            pairwise_weight /= theta_x.shape[-1] ** 0.5
        pairwise_weight = pairwise_weight.softmax(dim=-1)
        return pairwise_weight

    def dot_product(self, theta_x, phi_x):
        pairwise_weight = torch.matmul(theta_x, phi_x)
        pairwise_weight /= pairwise_weight.shape[-1]
        return pairwise_weight

    def forward(self, x):
        n = x.size(0)
        g_x = self.g(x).view(n, self.inter_channels, -1)
        g_x = g_x.permute(0, 2, 1)
        if self.mode == "gaussian":
            theta_x = x.view(n, self.in_channels, -1)
            theta_x = theta_x.permute(0, 2, 1)
        else:
            theta_x = self.theta(x).view(n, self.inter_channels, -1)
            theta_x = theta_x.permute(0, 2, 1)
        if self.mode == "gaussian":
            if self.sub_sample:
                phi_x = self.phi(x).view(n, self.in_channels, -1)
            else:
                phi_x = x.view(n, self.in_channels, -1)
        else:
            phi_x = self.phi(x).view(n, self.inter_channels, -1)
        pairwise_weight = getattr(self, self.mode)(theta_x, phi_x)
        y = torch.matmul(pairwise_weight, g_x)
        y = y.permute(0, 2, 1).contiguous().reshape(n, self.inter_channels, *x.size()[2:])
        return x + self.conv_out(y)


# ==================================================================================================
# CCNet (speedinghzl/CCNet, cc_attention/functions.py, pure-PyTorch version)
# ==================================================================================================
def INF(B, H, W, device=None):  # noqa: N802 (official name); .cuda() dropped for the CPU test
    return -torch.diag(torch.tensor(float("inf"), device=device).repeat(H), 0).unsqueeze(0).repeat(B * W, 1, 1)


class CrissCrossAttention(nn.Module):
    """Criss-Cross Attention Module"""

    def __init__(self, in_dim):
        super().__init__()
        self.query_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim, kernel_size=1)
        self.softmax = nn.Softmax(dim=3)
        self.INF = INF
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        m_batchsize, _, height, width = x.size()
        proj_query = self.query_conv(x)
        proj_query_H = proj_query.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height).permute(0, 2, 1)
        proj_query_W = proj_query.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width).permute(0, 2, 1)
        proj_key = self.key_conv(x)
        proj_key_H = proj_key.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height)
        proj_key_W = proj_key.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width)
        proj_value = self.value_conv(x)
        proj_value_H = proj_value.permute(0, 3, 1, 2).contiguous().view(m_batchsize * width, -1, height)
        proj_value_W = proj_value.permute(0, 2, 1, 3).contiguous().view(m_batchsize * height, -1, width)
        energy_H = (torch.bmm(proj_query_H, proj_key_H) + self.INF(m_batchsize, height, width, x.device).to(x.dtype)
                    ).view(m_batchsize, width, height, height).permute(0, 2, 1, 3)
        energy_W = torch.bmm(proj_query_W, proj_key_W).view(m_batchsize, height, width, width)
        concate = self.softmax(torch.cat([energy_H, energy_W], 3))
        att_H = concate[:, :, :, 0:height].permute(0, 2, 1, 3).contiguous().view(m_batchsize * width, height, height)
        att_W = concate[:, :, :, height:height + width].contiguous().view(m_batchsize * height, width, width)
        out_H = torch.bmm(proj_value_H, att_H.permute(0, 2, 1)).view(m_batchsize, width, -1, height).permute(0, 2, 3, 1)
        out_W = torch.bmm(proj_value_W, att_W.permute(0, 2, 1)).view(m_batchsize, height, -1, width).permute(0, 2, 1, 3)
        return self.gamma * (out_H + out_W) + x


class RCCA(nn.Module):
    """The recurrence of CCNet's ``RCCAModule`` (networks/ccnet.py): ``for i in range(recurrence):
    output = self.cca(output)``, one module, shared weights (the conva/convb/bottleneck around it
    belong to the head, not to the mechanism)."""

    def __init__(self, in_dim, recurrence=2):
        super().__init__()
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(in_dim)

    def forward(self, x):
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x


# ==================================================================================================
# EMANet (XiaLiPKU/EMANet, network.py)
# ==================================================================================================
class EMAU(nn.Module):
    """The Expectation-Maximization Attention Unit. ``eps`` is the official 1e-6 of ``_l2norm`` and
    of the z normalisation; the test also runs it at 0 to show that it is the only difference."""

    def __init__(self, c, k, stage_num=3, eps=1e-6):
        super().__init__()
        self.stage_num = stage_num
        self.eps = eps
        mu = torch.Tensor(1, c, k)
        mu.normal_(0, math.sqrt(2. / k))
        mu = self._l2norm(mu, dim=1)
        self.register_buffer("mu", mu)
        self.conv1 = nn.Conv2d(c, c, 1)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        idn = x
        x = self.conv1(x)
        b, c, h, w = x.size()
        x = x.view(b, c, h * w)                 # b * c * n
        mu = self.mu.repeat(b, 1, 1)            # b * c * k
        with torch.no_grad():
            for i in range(self.stage_num):
                x_t = x.permute(0, 2, 1)        # b * n * c
                z = torch.bmm(x_t, mu)          # b * n * k
                z = F.softmax(z, dim=2)         # b * n * k
                z_ = z / (self.eps + z.sum(dim=1, keepdim=True))
                mu = torch.bmm(x, z_)           # b * c * k
                mu = self._l2norm(mu, dim=1)
        z_t = z.permute(0, 2, 1)                # b * k * n
        x = mu.matmul(z_t)                      # b * c * n
        x = x.view(b, c, h, w)
        x = F.relu(x, inplace=True)
        x = self.conv2(x)
        x = x + idn
        x = F.relu(x, inplace=True)
        return x, mu

    def _l2norm(self, inp, dim):
        return inp / (getattr(self, "eps", 1e-6) + inp.norm(dim=dim, keepdim=True))


# ==================================================================================================
# DANet (junfu1115/DANet, encoding/nn/da_att.py)
# ==================================================================================================
class PAM_Module(nn.Module):
    """Position attention module"""

    def __init__(self, in_dim):
        super().__init__()
        self.chanel_in = in_dim
        self.query_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        m_batchsize, C, height, width = x.size()
        proj_query = self.query_conv(x).view(m_batchsize, -1, width * height).permute(0, 2, 1)
        proj_key = self.key_conv(x).view(m_batchsize, -1, width * height)
        energy = torch.bmm(proj_query, proj_key)
        attention = self.softmax(energy)
        proj_value = self.value_conv(x).view(m_batchsize, -1, width * height)
        out = torch.bmm(proj_value, attention.permute(0, 2, 1))
        out = out.view(m_batchsize, C, height, width)
        return self.gamma * out + x


class CAM_Module(nn.Module):
    """Channel attention module"""

    def __init__(self, in_dim):
        super().__init__()
        self.chanel_in = in_dim
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        m_batchsize, C, height, width = x.size()
        proj_query = x.view(m_batchsize, C, -1)
        proj_key = x.view(m_batchsize, C, -1).permute(0, 2, 1)
        energy = torch.bmm(proj_query, proj_key)
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        attention = self.softmax(energy_new)
        proj_value = x.view(m_batchsize, C, -1)
        out = torch.bmm(attention, proj_value)
        out = out.view(m_batchsize, C, height, width)
        return self.gamma * out + x


# ---- Coordinate attention: houqb/CoordAttention coordatt.py -------------------------------------------
class h_sigmoid(nn.Module):
    """Follows houqb/CoordAttention coordatt.py: ReLU6(x + 3) / 6."""

    def __init__(self, inplace=True):
        super().__init__()
        self.relu = nn.ReLU6(inplace=inplace)

    def forward(self, x):
        return self.relu(x + 3) / 6


class h_swish(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.sigmoid = h_sigmoid(inplace=inplace)

    def forward(self, x):
        return x * self.sigmoid(x)


class CoordAtt(nn.Module):
    """Follows CoordAtt in houqb/CoordAttention coordatt.py: AdaptiveAvgPool2d((None, 1)) and ((1, None)),
    cat along H, conv1 + bn1 + h_swish to mip = max(8, inp // reduction), split, conv_h / conv_w + sigmoid,
    identity * a_w * a_h."""

    def __init__(self, inp, oup, reduction=32):
        super().__init__()
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        mip = max(8, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = h_swish()
        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        identity = x
        n, c, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = torch.cat([x_h, x_w], dim=2)
        y = self.act(self.bn1(self.conv1(y)))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w).sigmoid()
        return identity * a_w * a_h


# ---- Axial attention: csrhddlam/axial-deeplab lib/models/axialnet.py ------------------------------------
class qkv_transform(nn.Conv1d):
    """Follows csrhddlam/axial-deeplab lib/models/utils.py: a plain Conv1d."""


class AxialAttention(nn.Module):
    """Follows AxialAttention in csrhddlam/axial-deeplab lib/models/axialnet.py (stride 1): the relative
    index exists for H == kernel_size only (its view needs it)."""

    def __init__(self, in_planes, out_planes, groups=8, kernel_size=56, stride=1, bias=False, width=False):
        assert (in_planes % groups == 0) and (out_planes % groups == 0)
        super().__init__()
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.groups = groups
        self.group_planes = out_planes // groups
        self.kernel_size = kernel_size
        self.stride = stride
        self.bias = bias
        self.width = width
        self.qkv_transform = qkv_transform(in_planes, out_planes * 2, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_qkv = nn.BatchNorm1d(out_planes * 2)
        self.bn_similarity = nn.BatchNorm2d(groups * 3)
        self.bn_output = nn.BatchNorm1d(out_planes * 2)
        self.relative = nn.Parameter(torch.randn(self.group_planes * 2, kernel_size * 2 - 1), requires_grad=True)
        query_index = torch.arange(kernel_size).unsqueeze(0)
        key_index = torch.arange(kernel_size).unsqueeze(1)
        relative_index = key_index - query_index + kernel_size - 1
        self.register_buffer('flatten_index', relative_index.view(-1))

    def forward(self, x):
        if self.width:
            x = x.permute(0, 2, 1, 3)
        else:
            x = x.permute(0, 3, 1, 2)  # N, W, C, H
        N, W, C, H = x.shape
        x = x.contiguous().view(N * W, C, H)
        qkv = self.bn_qkv(self.qkv_transform(x))
        q, k, v = torch.split(qkv.reshape(N * W, self.groups, self.group_planes * 2, H),
                              [self.group_planes // 2, self.group_planes // 2, self.group_planes], dim=2)
        all_embeddings = torch.index_select(self.relative, 1, self.flatten_index).view(
            self.group_planes * 2, self.kernel_size, self.kernel_size)
        q_embedding, k_embedding, v_embedding = torch.split(
            all_embeddings, [self.group_planes // 2, self.group_planes // 2, self.group_planes], dim=0)
        qr = torch.einsum('bgci,cij->bgij', q, q_embedding)
        kr = torch.einsum('bgci,cij->bgij', k, k_embedding).transpose(2, 3)
        qk = torch.einsum('bgci, bgcj->bgij', q, k)
        stacked_similarity = torch.cat([qk, qr, kr], dim=1)
        stacked_similarity = self.bn_similarity(stacked_similarity).view(N * W, 3, self.groups, H, H).sum(dim=1)
        similarity = F.softmax(stacked_similarity, dim=3)
        sv = torch.einsum('bgij,bgcj->bgci', similarity, v)
        sve = torch.einsum('bgij,cij->bgci', similarity, v_embedding)
        stacked_output = torch.cat([sv, sve], dim=-1).view(N * W, self.out_planes * 2, H)
        output = self.bn_output(stacked_output).view(N, W, self.out_planes, 2, H).sum(dim=-2)
        if self.width:
            output = output.permute(0, 2, 1, 3)
        else:
            output = output.permute(0, 2, 3, 1)
        return output


# ==================================================================================================
# EANet (MenghaoGuo/EANet, model_torch.py); norm_layer = BatchNorm2d (the repo's SyncBN, momentum 0.1)
# ==================================================================================================
class ConvBNReLU(nn.Module):
    def __init__(self, c_in, c_out, kernel_size, stride, padding, dilation):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class External_attention(nn.Module):  # noqa: N801 (official name)
    def __init__(self, c, k=64):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1)
        self.k = k
        self.linear_0 = nn.Conv1d(c, self.k, 1, bias=False)
        self.linear_1 = nn.Conv1d(self.k, c, 1, bias=False)
        self.linear_1.weight.data = self.linear_0.weight.data.permute(1, 0, 2)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        idn = x
        x = self.conv1(x)
        b, c, h, w = x.size()
        x = x.view(b, c, h * w)
        attn = self.linear_0(x)
        attn = F.softmax(attn, dim=-1)
        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))
        x = self.linear_1(attn)
        x = x.view(b, c, h, w)
        x = self.conv2(x)
        x = x + idn
        return F.relu(x)


class EANetHead(nn.Module):
    """EANet's forward after the extractor: fc0, linu, fc1 (+ Dropout2d), fc2 (logits at feature size)."""

    def __init__(self, c_in, c, c_out, n_classes, k=64):
        super().__init__()
        self.fc0 = ConvBNReLU(c_in, c, 3, 1, 1, 1)
        self.linu = External_attention(c, k)
        self.fc1 = nn.Sequential(ConvBNReLU(c, c_out, 3, 1, 1, 1), nn.Dropout2d(p=0.1))
        self.fc2 = nn.Conv2d(c_out, n_classes, 1)

    def forward(self, x):
        return self.fc2(self.fc1(self.linu(self.fc0(x))))


# ==================================================================================================
# Polarized self-attention (External-Attention-pytorch, model/attention/PolarizedSelfAttention.py)
# ==================================================================================================
class ParallelPolarizedSelfAttention(nn.Module):
    def __init__(self, channel=512):
        super().__init__()
        self.ch_wv = nn.Conv2d(channel, channel // 2, kernel_size=(1, 1))
        self.ch_wq = nn.Conv2d(channel, 1, kernel_size=(1, 1))
        self.softmax_channel = nn.Softmax(1)
        self.softmax_spatial = nn.Softmax(-1)
        self.ch_wz = nn.Conv2d(channel // 2, channel, kernel_size=(1, 1))
        self.ln = nn.LayerNorm(channel)
        self.sigmoid = nn.Sigmoid()
        self.sp_wv = nn.Conv2d(channel, channel // 2, kernel_size=(1, 1))
        self.sp_wq = nn.Conv2d(channel, channel // 2, kernel_size=(1, 1))
        self.agp = nn.AdaptiveAvgPool2d((1, 1))

    def channel_weight(self, x):
        b, c, h, w = x.size()
        channel_wv = self.ch_wv(x)
        channel_wq = self.ch_wq(x)
        channel_wv = channel_wv.reshape(b, c // 2, -1)
        channel_wq = channel_wq.reshape(b, -1, 1)
        channel_wq = self.softmax_channel(channel_wq)
        channel_wz = torch.matmul(channel_wv, channel_wq).unsqueeze(-1)
        return self.sigmoid(self.ln(self.ch_wz(channel_wz).reshape(b, c, 1).permute(0, 2, 1))).permute(0, 2, 1).reshape(
            b, c, 1, 1)

    def spatial_weight(self, x):
        b, c, h, w = x.size()
        spatial_wv = self.sp_wv(x)
        spatial_wq = self.sp_wq(x)
        spatial_wq = self.agp(spatial_wq)
        spatial_wv = spatial_wv.reshape(b, c // 2, -1)
        spatial_wq = spatial_wq.permute(0, 2, 3, 1).reshape(b, 1, c // 2)
        spatial_wq = self.softmax_spatial(spatial_wq)
        spatial_wz = torch.matmul(spatial_wq, spatial_wv)
        return self.sigmoid(spatial_wz.reshape(b, 1, h, w))

    def forward(self, x):
        channel_out = self.channel_weight(x) * x
        spatial_out = self.spatial_weight(x) * x
        return spatial_out + channel_out


class SequentialPolarizedSelfAttention(ParallelPolarizedSelfAttention):
    def forward(self, x):
        channel_out = self.channel_weight(x) * x
        return self.spatial_weight(channel_out) * channel_out


# ==================================================================================================
# Triplet attention (landskape-ai/triplet-attention, MODELS/triplet_attention.py); BasicConv as CBAM's
# ==================================================================================================
class ZPool(nn.Module):
    def forward(self, x):
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class AttentionGate(nn.Module):
    def __init__(self):
        super().__init__()
        kernel_size = 7
        self.compress = ZPool()
        self.conv = BasicConv(2, 1, kernel_size, stride=1, padding=(kernel_size - 1) // 2, relu=False)

    def forward(self, x):
        x_compress = self.compress(x)
        x_out = self.conv(x_compress)
        scale = torch.sigmoid_(x_out)
        return x * scale


class TripletAttention(nn.Module):
    def __init__(self, no_spatial=False):
        super().__init__()
        self.cw = AttentionGate()
        self.hc = AttentionGate()
        self.no_spatial = no_spatial
        if not no_spatial:
            self.hw = AttentionGate()

    def forward(self, x):
        x_perm1 = x.permute(0, 2, 1, 3).contiguous()
        x_out1 = self.cw(x_perm1)
        x_out11 = x_out1.permute(0, 2, 1, 3).contiguous()
        x_perm2 = x.permute(0, 3, 2, 1).contiguous()
        x_out2 = self.hc(x_perm2)
        x_out21 = x_out2.permute(0, 3, 2, 1).contiguous()
        if not self.no_spatial:
            x_out = self.hw(x)
            x_out = 1 / 3 * (x_out + x_out11 + x_out21)
        else:
            x_out = 1 / 2 * (x_out11 + x_out21)
        return x_out


# ==================================================================================================
# BAM (Jongchan/attention-module, MODELS/bam.py). The file's ``self.gate_activation = gate_activation``
# (a name defined nowhere: a NameError) is left out. ``global_pool`` / ``combine``: the two places
# where ours follows the paper instead (defaults: the official code).
# ==================================================================================================
class BAMChannelGate(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, num_layers=1, global_pool=False):
        super().__init__()
        self.global_pool = global_pool
        self.gate_c = nn.Sequential()
        self.gate_c.add_module("flatten", Flatten())
        gate_channels = [gate_channel]
        gate_channels += [gate_channel // reduction_ratio] * num_layers
        gate_channels += [gate_channel]
        for i in range(len(gate_channels) - 2):
            self.gate_c.add_module("gate_c_fc_%d" % i, nn.Linear(gate_channels[i], gate_channels[i + 1]))
            self.gate_c.add_module("gate_c_bn_%d" % (i + 1), nn.BatchNorm1d(gate_channels[i + 1]))
            self.gate_c.add_module("gate_c_relu_%d" % (i + 1), nn.ReLU())
        self.gate_c.add_module("gate_c_fc_final", nn.Linear(gate_channels[-2], gate_channels[-1]))

    def forward(self, in_tensor):
        if self.global_pool:
            avg_pool = F.adaptive_avg_pool2d(in_tensor, 1)
        else:
            avg_pool = F.avg_pool2d(in_tensor, in_tensor.size(2), stride=in_tensor.size(2))
        return self.gate_c(avg_pool).unsqueeze(2).unsqueeze(3).expand_as(in_tensor)


class BAMSpatialGate(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, dilation_conv_num=2, dilation_val=4):
        super().__init__()
        self.gate_s = nn.Sequential()
        self.gate_s.add_module("gate_s_conv_reduce0", nn.Conv2d(gate_channel, gate_channel // reduction_ratio,
                                                                kernel_size=1))
        self.gate_s.add_module("gate_s_bn_reduce0", nn.BatchNorm2d(gate_channel // reduction_ratio))
        self.gate_s.add_module("gate_s_relu_reduce0", nn.ReLU())
        for i in range(dilation_conv_num):
            self.gate_s.add_module("gate_s_conv_di_%d" % i, nn.Conv2d(
                gate_channel // reduction_ratio, gate_channel // reduction_ratio, kernel_size=3,
                padding=dilation_val, dilation=dilation_val))
            self.gate_s.add_module("gate_s_bn_di_%d" % i, nn.BatchNorm2d(gate_channel // reduction_ratio))
            self.gate_s.add_module("gate_s_relu_di_%d" % i, nn.ReLU())
        self.gate_s.add_module("gate_s_conv_final", nn.Conv2d(gate_channel // reduction_ratio, 1, kernel_size=1))

    def forward(self, in_tensor):
        return self.gate_s(in_tensor).expand_as(in_tensor)


class BAM(nn.Module):
    def __init__(self, gate_channel, reduction_ratio=16, global_pool=False, combine="product"):
        super().__init__()
        self.combine = combine
        self.channel_att = BAMChannelGate(gate_channel, reduction_ratio, global_pool=global_pool)
        self.spatial_att = BAMSpatialGate(gate_channel, reduction_ratio)

    def forward(self, in_tensor):
        if self.combine == "product":
            att = 1 + torch.sigmoid(self.channel_att(in_tensor) * self.spatial_att(in_tensor))
        else:
            att = 1 + torch.sigmoid(self.channel_att(in_tensor) + self.spatial_att(in_tensor))
        return att * in_tensor


# ==================================================================================================
# SimAM (ZjjConan/SimAM, networks/attentions/simam_module.py)
# ==================================================================================================
class simam_module(torch.nn.Module):  # noqa: N801 (official name)
    def __init__(self, channels=None, e_lambda=1e-4):
        super().__init__()
        self.activaton = nn.Sigmoid()
        self.e_lambda = e_lambda

    def forward(self, x):
        b, c, h, w = x.size()
        n = w * h - 1
        x_minus_mu_square = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
        y = x_minus_mu_square / (4 * (x_minus_mu_square.sum(dim=[2, 3], keepdim=True) / n + self.e_lambda)) + 0.5
        return x * self.activaton(y)


# ==================================================================================================
# Shuffle attention (wofmanaf/SA-Net, models/sa_resnet.py)
# ==================================================================================================
class sa_layer(nn.Module):  # noqa: N801 (official name)
    def __init__(self, channel, groups=64):
        super().__init__()
        self.groups = groups
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.cweight = nn.Parameter(torch.zeros(1, channel // (2 * groups), 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, channel // (2 * groups), 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, channel // (2 * groups), 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, channel // (2 * groups), 1, 1))
        self.sigmoid = nn.Sigmoid()
        self.gn = nn.GroupNorm(channel // (2 * groups), channel // (2 * groups))

    @staticmethod
    def channel_shuffle(x, groups):
        b, c, h, w = x.shape
        x = x.reshape(b, groups, -1, h, w)
        x = x.permute(0, 2, 1, 3, 4)
        return x.reshape(b, -1, h, w)

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, -1, h, w)
        x_0, x_1 = x.chunk(2, dim=1)
        xn = self.avg_pool(x_0)
        xn = self.cweight * xn + self.cbias
        xn = x_0 * self.sigmoid(xn)
        xs = self.gn(x_1)
        xs = self.sweight * xs + self.sbias
        xs = x_1 * self.sigmoid(xs)
        out = torch.cat([xn, xs], dim=1)
        out = out.reshape(b, -1, h, w)
        return self.channel_shuffle(out, 2)
