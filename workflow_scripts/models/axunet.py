"""AX-Unet (the second seed's CT baseline): a 2-D U-Net with depthwise-separable convolutions in
every encoder/decoder stage, a modified ASPP (parallel dilated convolutions plus image pooling) at
the bottleneck, and a boundary-aware loss = focal + generalised Dice + an explicit boundary term.

The network follows nnU-Net's 2d plan (stages, features, strides, kernel sizes), so patch size,
deep-supervision scales and the predictor all stay nnU-Net's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _norm_act(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(channels, eps=1e-5, affine=True), nn.LeakyReLU(0.01, inplace=True)]


class SeparableConv(nn.Sequential):
    """Depthwise k×k (one filter per channel, optional stride) then pointwise 1×1, norm, LeakyReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1):
        kernel = tuple(kernel) if isinstance(kernel, (list, tuple)) else (kernel, kernel)
        pad = tuple(k // 2 for k in kernel)
        super().__init__(nn.Conv2d(cin, cin, kernel, stride=stride, padding=pad, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), *_norm_act(cout))


class ASPP(nn.Module):
    """Modified atrous spatial pyramid pooling: 1×1, dilated 3×3 branches and image pooling."""

    def __init__(self, channels: int, rates=(2, 4, 6)):
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), *_norm_act(channels))])
        for r in rates:
            self.branches.append(nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=r, dilation=r, groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False), *_norm_act(channels)))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1), nn.LeakyReLU(0.01, inplace=True))
        self.fuse = nn.Sequential(nn.Conv2d(channels * (len(rates) + 2), channels, 1, bias=False), *_norm_act(channels))

    def forward(self, x):
        pooled = F.interpolate(self.pool(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class AXDecoder(nn.Module):
    def __init__(self, features, strides, kernels, num_classes, deep_supervision):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.up, self.blocks, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(len(features) - 1, 0, -1):
            self.up.append(nn.ConvTranspose2d(features[i], features[i - 1], strides[i], stride=strides[i], bias=False))
            self.blocks.append(nn.Sequential(SeparableConv(2 * features[i - 1], features[i - 1], kernels[i - 1]),
                                             SeparableConv(features[i - 1], features[i - 1], kernels[i - 1])))
            self.heads.append(nn.Conv2d(features[i - 1], num_classes, 1))

    def forward(self, skips):
        x = skips[-1]
        outputs = []
        for k, (up, block, head) in enumerate(zip(self.up, self.blocks, self.heads)):
            x = block(torch.cat([up(x), skips[-(k + 2)]], dim=1))
            if self.deep_supervision or k == len(self.up) - 1:
                outputs.append(head(x))
        outputs = outputs[::-1]  # highest resolution first, as nnU-Net's loss expects
        return outputs if self.deep_supervision else outputs[0]


class AXUNet(nn.Module):
    def __init__(self, input_channels: int, num_classes: int, features_per_stage, strides, kernel_sizes,
                 deep_supervision: bool = True, aspp_rates=(2, 4, 6)):
        super().__init__()
        features = list(features_per_stage)
        strides = [tuple(s) if isinstance(s, (list, tuple)) else (s, s) for s in strides]
        stages, cin = [], input_channels
        for i, (f, s, k) in enumerate(zip(features, strides, kernel_sizes)):
            first = (nn.Sequential(nn.Conv2d(cin, f, tuple(k), stride=s, padding=tuple(x // 2 for x in k), bias=False),
                                   *_norm_act(f)) if i == 0 else SeparableConv(cin, f, k, stride=s))
            stages.append(nn.Sequential(first, SeparableConv(f, f, k)))
            cin = f
        self.encoder = nn.ModuleList(stages)
        self.aspp = ASPP(features[-1], aspp_rates)
        self.decoder = AXDecoder(features, strides, kernel_sizes, num_classes, deep_supervision)

    def forward(self, x):
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips[-1] = self.aspp(skips[-1])
        return self.decoder(skips)


def _one_hot(target: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(target[:, 0].long(), n).movedim(-1, 1).float()


def _morph_gradient(x: torch.Tensor) -> torch.Tensor:
    """Soft boundary map: dilation minus erosion with a 3×3 window (works on probabilities)."""
    return F.max_pool2d(x, 3, 1, 1) + F.max_pool2d(-x, 3, 1, 1)


class BoundaryAwareLoss(nn.Module):
    """focal (γ) + generalised Dice (Sudre et al. 2017) + boundary term.

    The boundary term is 1 − soft Dice between the morphological gradient of the predicted
    foreground probability and that of the reference: it pulls predicted edges onto true edges.
    """

    def __init__(self, gamma: float = 2.0, w_focal: float = 1.0, w_gdl: float = 1.0, w_boundary: float = 1.0,
                 eps: float = 1e-6):
        super().__init__()
        self.gamma, self.w_focal, self.w_gdl, self.w_boundary, self.eps = gamma, w_focal, w_gdl, w_boundary, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = logits.shape[1]
        logp = F.log_softmax(logits, dim=1)
        p = logp.exp()
        onehot = _one_hot(target, n)
        logp_t = (logp * onehot).sum(1)
        focal = (-(1 - logp_t.exp()) ** self.gamma * logp_t).mean()
        dims = (0, 2, 3)
        w = 1.0 / (onehot.sum(dims) ** 2).clamp_min(1.0)
        gdl = 1 - 2 * (w * (p * onehot).sum(dims)).sum() / ((w * (p + onehot).sum(dims)).sum() + self.eps)
        fg_p = 1 - p[:, :1]  # foreground = not background (any label)
        fg_t = 1 - onehot[:, :1]
        bp, bt = _morph_gradient(fg_p), _morph_gradient(fg_t)
        boundary = 1 - (2 * (bp * bt).sum() + self.eps) / (bp.sum() + bt.sum() + self.eps)
        return self.w_focal * focal + self.w_gdl * gdl + self.w_boundary * boundary
