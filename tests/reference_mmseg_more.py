"""Independent re-implementations of more mmsegmentation 1.x decode heads, for equivalence tests.

The companion of tests/reference_mmseg.py (whose mmcv bricks it reuses), written from mmseg's own
sources in plain PyTorch with their module and attribute names:

- open-mmlab/mmsegmentation  mmseg/models/decode_heads/{dnl_head,isa_head,apc_head,ocr_head,ann_head}.py,
                             mmseg/models/utils/self_attention_block.py (the general form, all options)

Only what the recipes use is kept (BN and ReLU). Not collected by pytest (no ``test_`` prefix); used
by tests/test_more_heads.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_mmseg import BaseDecodeHead, ConvModule, FCNHead, NonLocal2d, _BlockBetweenConvsHead, resize  # noqa: F401


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


# ---- Coordinate attention (not in mmseg: the authors' code) ----------------------------------------
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


# ---- Axial attention (not in mmseg: the authors' code) --------------------------------------------
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
