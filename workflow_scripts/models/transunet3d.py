"""PanSegNet with softmax attention: the study's TransUNet-3D stand-in (an attention ablation).

The authors released weights named TransUNet-3D, but their code has no softmax-attention network
(the softmax path is commented out), so this row of the comparison is PanSegNet's network with
the one change that name implies: standard multi-head attention, softmax(QKᵀ/√d)·V per head,
instead of Efficient Attention. Everything else is PanSegNet's: the same U-Net, width, heads,
layers, feed-forward, dropout, positional code and projections (parameter names and shapes equal
PanSegNet's), and no residual around the block.

Softmax attention builds an N×N matrix per head (N = bottleneck tokens): its memory grows with N².
``max_tokens`` (network option, default 4096) refuses a configuration above it, before training
starts (the trainer checks the plan) and in every forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .efficient_attention import MultiHeadEfficientAttention
from .pansegnet import PanSegNet

# 4096 tokens: one 4096² float32 matrix is 64 MiB per head and sample, 8 heads x 8 layers x batch 2
# of them (kept for the backward pass) 8 GiB; nnU-Net's own plans give a few hundred tokens.
DEFAULT_MAX_TOKENS = 4096


class TooManyTokens(ValueError):
    """A bottleneck whose softmax attention matrix would exceed the token limit."""


def token_limit_message(tokens: int, max_tokens: int, where: str) -> str:
    return (f"transunet3d: {where} has {tokens} bottleneck tokens, more than max_tokens={max_tokens}: softmax "
            f"attention builds a {tokens}x{tokens} matrix per head ({tokens * tokens * 4 / 2**20:.0f} MiB each in "
            f"float32). Use a smaller patch or more pooling stages, or raise "
            f"model_catalog.<model>.network.max_tokens knowingly")


def softmax_attention_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d)·V per head; q, k, v: [..., N, d] (PyTorch's fused kernel, exact)."""
    return F.scaled_dot_product_attention(q, k, v)


class MultiHeadSoftmaxAttention(MultiHeadEfficientAttention):
    """PanSegNet's multi-head attention module (same projections) with softmax attention."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, max_tokens: int = DEFAULT_MAX_TOKENS):
        super().__init__(d_model, heads, dropout)
        self.max_tokens = int(max_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, N, C]
        b, n, c = x.shape
        if n > self.max_tokens:
            raise TooManyTokens(token_limit_message(n, self.max_tokens, "this input"))
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = softmax_attention_heads(q, k, v)  # [B, heads, N, d]
        return self.out(self.dropout(y.transpose(1, 2).reshape(b, n, c)))


class TransUNet3D(PanSegNet):
    """PanSegNet whose bottleneck transformer layers use softmax attention."""

    def __init__(self, unet: nn.Module, max_tokens: int = DEFAULT_MAX_TOKENS, **transformer):
        super().__init__(unet, **transformer)
        for layer in self.bottleneck.layers:
            old = layer.attn
            layer.attn = MultiHeadSoftmaxAttention(old.qkv.in_features, old.heads, old.dropout.p, max_tokens)
        self.max_tokens = int(max_tokens)


def bottleneck_tokens(patch_size, strides) -> int:
    """Tokens at the bottleneck of a U-Net: the patch divided by the stage strides (a strided 3×3 conv
    with padding 1 rounds up)."""
    size = [int(p) for p in patch_size]
    for stride in strides:
        stride = stride if isinstance(stride, (list, tuple)) else [stride] * len(size)
        size = [-(-s // int(st)) for s, st in zip(size, stride)]
    return math.prod(size)
