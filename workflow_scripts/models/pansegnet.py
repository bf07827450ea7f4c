"""PanSegNet: nnU-Net's U-Net with an Efficient-Attention transformer on the bottleneck."""

from __future__ import annotations

from torch import nn

from .efficient_attention import BottleneckTransformer

PAPER_TRANSFORMER = dict(d_model=512, heads=8, layers=8, ff_dim=512, dropout=0.3)


class PanSegNet(nn.Module):
    """Wraps an nnU-Net PlainConvUNet: encoder -> transformer on the deepest features -> decoder.

    Keeps the attributes nnU-Net relies on (``encoder``, ``decoder`` with its ``deep_supervision``
    switch), so nnU-Net's trainer, deep-supervision loss and predictor work unchanged.
    """

    def __init__(self, unet: nn.Module, **transformer):
        super().__init__()
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        channels = unet.encoder.output_channels[-1]
        conv_op = unet.encoder.conv_op
        self.bottleneck = BottleneckTransformer(channels, conv_op=conv_op, **{**PAPER_TRANSFORMER, **transformer})

    def forward(self, x):
        skips = self.encoder(x)
        skips[-1] = self.bottleneck(skips[-1])
        return self.decoder(skips)
