"""LinTransUNet, the authors' comparison model (their nnU-Net v1 code: ``nnUNetTrainerV2_LinTransUNet``
-> ``LinUNet`` in ``generic_modular_LinTransUNet.py``), built from an nnU-Net v2 plan.

- Encoder: a stem (3×3×3 conv -> InstanceNorm -> LeakyReLU), then per stage two residual blocks
  (conv-norm-LeakyReLU-conv-norm + skip, LeakyReLU after the sum; the skip is a 1×1 conv + norm
  when the stride or the channels change; the first block is strided by the stage's stride).
- Decoder, lowest resolution first: transposed conv (kernel = stride, no bias) -> attention on the
  skip -> concat [upsampled, attended skip] -> two residual blocks -> a 1×1 segmentation head (no
  bias) per stage (deep supervision).
- Attention on the two lowest-resolution skips: 1×1 conv + ReLU, then ``layers`` × [post-LN
  transformer layer with PanSegNet's Efficient (linear) attention, d_model = the skip's channels,
  ``heads`` heads, feed-forward 2·d_model, dropout; then a positional term x + depthwise 3×3×3
  conv(x), Dropout3d]. No absolute positional code; the upsampled tensor is not used here.
- Attention gates on the other skips: ψ = σ(1×1(ReLU(1×1(skip) + 1×1(up)))), output =
  InstanceNorm(1×1(skip·ψ)) (InstanceNorm without affine parameters, as in the authors' code).

Features per stage: the plan's, except that stages nnU-Net's planner capped at its maximum (320
in 3-D: the features stop doubling there) continue the doubling up to ``max_features`` (512, the
authors' cap); a plan whose features keep doubling (e.g. the demo's [8, 16, 32, 64] override) is
used as it is; ``max_features`` set to the plan's maximum keeps any plan as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from .efficient_attention import EncoderLayer

LINTRANSUNET_DEFAULTS = dict(heads=8, layers=8, dropout=0.3, max_features=512, transformer_skips=2)


def _ops(dim: int):
    if dim == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.Dropout3d
    if dim == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.Dropout2d
    raise ValueError(f"LinTransUNet: {dim}-D convolutions are not supported (2-D or 3-D)")


def _tuple(x, dim: int) -> tuple[int, ...]:
    return tuple(int(v) for v in x) if isinstance(x, (list, tuple)) else (int(x),) * dim


def lintransunet_features(plan_features, max_features: int = 512) -> list[int]:
    """The plan's features, with its capped tail continued by doubling up to ``max_features``.

    A stage counts as capped where the plan's features sit at their maximum without having doubled
    from the stage before (nnU-Net's [32, 64, 128, 256, 320, 320] -> [32, 64, 128, 256, 512, 512]).
    """
    feats = [int(f) for f in plan_features]
    cap, out = max(feats), feats[:1]
    for prev, f in zip(feats, feats[1:]):
        out.append(min(2 * out[-1], max_features) if f == cap and f < 2 * prev else f)
    return out


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride, dim: int):
        super().__init__()
        conv, _, norm, _ = _ops(dim)
        kernel, stride = _tuple(kernel, dim), _tuple(stride, dim)
        pad = tuple((k - 1) // 2 for k in kernel)
        self.conv1 = conv(cin, cout, kernel, stride=stride, padding=pad)
        self.norm1 = norm(cout, eps=1e-5, affine=True)
        self.conv2 = conv(cout, cout, kernel, padding=pad)
        self.norm2 = norm(cout, eps=1e-5, affine=True)
        self.act = nn.LeakyReLU(0.01)
        self.skip = (nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), norm(cout, eps=1e-5, affine=True))
                     if any(s != 1 for s in stride) or cin != cout else nn.Identity())

    def forward(self, x):
        out = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        return self.act(out + self.skip(x))


def residual_stage(cin: int, cout: int, kernel, stride, dim: int, blocks: int = 2) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(cin, cout, kernel, stride, dim),
                         *[ResidualBlock(cout, cout, kernel, 1, dim) for _ in range(blocks - 1)])


class SkipTransformer(nn.Module):
    """Linear-attention transformer on a skip connection, a depthwise-conv positional term after each layer."""

    def __init__(self, channels: int, heads: int, layers: int, dropout: float, dim: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"LinTransUNet: a skip with {channels} channels cannot be split into {heads} heads; "
                             "set model_catalog.<model>.network.heads to a divisor of it")
        conv, _, _, drop = _ops(dim)
        self.proj = conv(channels, channels, 1)
        self.layers = nn.ModuleList(EncoderLayer(channels, heads, 2 * channels, dropout) for _ in range(layers))
        self.pos = nn.ModuleList(conv(channels, channels, 3, padding=1, groups=channels) for _ in range(layers))
        self.pos_dropout = drop(dropout)

    def forward(self, skip, up=None):  # `up` is not used (as in the authors' code)
        x = nn.functional.relu(self.proj(skip))
        shape = x.shape
        for layer, pos in zip(self.layers, self.pos):
            x = layer(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(shape)
            x = self.pos_dropout(x + pos(x))
        return x


class AttentionGate(nn.Module):
    """Additive attention gate: the upsampled features weight the skip voxel by voxel."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        conv, _, norm, _ = _ops(dim)
        self.w_skip = conv(channels, channels, 1)
        self.w_up = conv(channels, channels, 1)
        self.psi = conv(channels, 1, 1)
        self.w_out = conv(channels, channels, 1)
        self.norm = norm(channels)  # no affine parameters, as in the authors' code

    def forward(self, skip, up):
        psi = (self.psi(nn.functional.relu(self.w_skip(skip) + self.w_up(up)))).sigmoid()
        return self.norm(self.w_out(skip * psi))


class LinTransUNetEncoder(nn.Module):
    def __init__(self, input_channels: int, features, kernel_sizes, strides, dim: int):
        super().__init__()
        conv, _, norm, _ = _ops(dim)
        self.stem = nn.Sequential(conv(input_channels, features[0], 3, padding=1),
                                  norm(features[0], eps=1e-5, affine=True), nn.LeakyReLU(0.01))
        stages, cin = [], features[0]
        for f, k, s in zip(features, kernel_sizes, strides):
            stages.append(residual_stage(cin, f, k, s, dim))
            cin = f
        self.stages = nn.ModuleList(stages)
        self.output_channels = list(features)
        self.strides = [_tuple(s, dim) for s in strides]

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class LinTransUNetDecoder(nn.Module):
    def __init__(self, encoder: LinTransUNetEncoder, num_classes: int, kernel_sizes, dim: int, heads: int, layers: int,
                 dropout: float, transformer_skips: int, deep_supervision: bool):
        super().__init__()
        _, transp, _, _ = _ops(dim)
        feats, strides = encoder.output_channels, encoder.strides
        self.deep_supervision = deep_supervision
        self.transpconvs, self.attention, self.stages, self.seg_layers = (nn.ModuleList() for _ in range(4))
        for i, s in enumerate(range(len(feats) - 2, -1, -1)):  # lowest resolution first
            self.transpconvs.append(transp(feats[s + 1], feats[s], strides[s + 1], stride=strides[s + 1], bias=False))
            self.attention.append(SkipTransformer(feats[s], heads, layers, dropout, dim) if i < transformer_skips
                                  else AttentionGate(feats[s], dim))
            self.stages.append(residual_stage(2 * feats[s], feats[s], kernel_sizes[s], 1, dim))
            self.seg_layers.append(_ops(dim)[0](feats[s], num_classes, 1, bias=False))

    def forward(self, skips):
        x = skips[-1]
        outputs = []
        for i, (tu, att, stage, head) in enumerate(zip(self.transpconvs, self.attention, self.stages, self.seg_layers)):
            x = tu(x)
            x = stage(torch.cat([x, att(skips[-(i + 2)], x)], dim=1))
            if self.deep_supervision or i == len(self.stages) - 1:
                outputs.append(head(x))
        outputs = outputs[::-1]  # highest resolution first, as nnU-Net's deep-supervision loss expects
        return outputs if self.deep_supervision else outputs[0]


class LinTransUNet(nn.Module):
    """``encoder`` and ``decoder`` (with its ``deep_supervision`` switch), as nnU-Net's trainer expects."""

    def __init__(self, input_channels: int, num_classes: int, features_per_stage, kernel_sizes, strides,
                 deep_supervision: bool = True, **options):
        super().__init__()
        unknown = set(options) - set(LINTRANSUNET_DEFAULTS)
        if unknown:
            raise ValueError(f"LinTransUNet: unknown network options {sorted(unknown)} "
                             f"(known: {sorted(LINTRANSUNET_DEFAULTS)})")
        o = {**LINTRANSUNET_DEFAULTS, **options}
        if len(features_per_stage) < 2:
            raise ValueError("LinTransUNet needs at least two stages")
        dim = len(kernel_sizes[0]) if isinstance(kernel_sizes[0], (list, tuple)) else 3
        self.features = lintransunet_features(features_per_stage, o["max_features"])
        self.encoder = LinTransUNetEncoder(input_channels, self.features, kernel_sizes, strides, dim)
        self.decoder = LinTransUNetDecoder(self.encoder, num_classes, kernel_sizes, dim, o["heads"], o["layers"],
                                           o["dropout"], o["transformer_skips"], deep_supervision)

    def forward(self, x):
        return self.decoder(self.encoder(x))
