"""Efficient Attention (Shen et al., arXiv 1812.01243) and the transformer block PanSegNet puts on
its U-Net bottleneck.

Per head, with Q, K, V of shape [N, d] (N tokens, d features):
    Q̂ = softmax over features(Q) / √d,   K̂ = softmax over tokens(K),   out = Q̂ · (K̂ᵀ V)
K̂ᵀV is a d×d matrix, so the cost is O(N·d²) in time and O(N·d + d²) in memory instead of the
O(N²·d) and O(N²) of softmax attention: tokens can be every voxel of the bottleneck.

Positional encoding: the released code added a fixed 1-D sinusoid over the flattened D·H·W tokens,
whose length was fixed by the training patch size, so another input size broke it. Here each token
gets sinusoids of its own (z, y, x) index, computed for the actual feature-map size on every call:
a token's code depends only on where it sits, so any patch size, sliding-window tile or whole
volume works, and the code of a position is the same for every input size.

``positional_encoding="legacy_1d"`` reproduces the released code instead, for weights imported from
it (``workflow_scripts.deployment.v1_import``): one interleaved sin/cos sinusoid over the flattened tokens, of a
fixed length (the training patch's bottleneck), held as a buffer; any other token count is refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v: [..., N, d] -> [..., N, d]."""
    d = q.shape[-1]
    q_hat = F.softmax(q, dim=-1) / math.sqrt(d)
    k_hat = F.softmax(k, dim=-2)
    context = k_hat.transpose(-2, -1) @ v  # [..., d, d]
    return q_hat @ context


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Standard scaled dot-product attention (the quadratic baseline of the benchmark)."""
    return F.scaled_dot_product_attention(q, k, v)


class MultiHeadEfficientAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, N, C]
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = efficient_attention(q, k, v)  # [B, heads, N, d]
        return self.out(self.dropout(y.transpose(1, 2).reshape(b, n, c)))


class EncoderLayer(nn.Module):
    """Post-LayerNorm transformer encoder layer with Efficient Attention and a GELU feed-forward."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float, layer_norm_eps: float = 1e-5):
        super().__init__()
        self.attn = MultiHeadEfficientAttention(d_model, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model))
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.attn(x)))
        return self.norm2(x + self.drop2(self.ff(x)))


def sinusoidal_position_code(shape: tuple[int, ...], dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[prod(shape), dim] sinusoids of each token's grid index, one band of channels per axis."""
    n_axes = len(shape)
    per_axis = 2 * (dim // (2 * n_axes))
    if per_axis == 0:
        raise ValueError(f"d_model {dim} too small for a positional code over {n_axes} axes")
    freqs = torch.exp(torch.arange(0, per_axis, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / per_axis))
    grids = torch.meshgrid(*[torch.arange(s, device=device, dtype=torch.float32) for s in shape], indexing="ij")
    bands = []
    for g in grids:
        angles = g.reshape(-1, 1) * freqs  # [N, per_axis/2]
        bands.append(torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(-1, per_axis))
    code = torch.cat(bands, dim=1)
    if code.shape[1] < dim:  # channels left over when dim is not a multiple of 2·axes
        code = F.pad(code, (0, dim - code.shape[1]))
    return code.to(dtype)


def legacy_1d_position_code(length: int, dim: int) -> torch.Tensor:
    """[1, length, dim]: the released network's code, sin(p·f_i) in even and cos(p·f_i) in odd channels,
    f_i = 10000^(-2i/dim), computed in float32 with the same operations (so the same bits)."""
    position = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, dim, 2).float() * (-torch.log(torch.tensor(10000.0)) / dim))
    code = torch.zeros((length, dim))
    code[:, 0::2] = torch.sin(position * freqs)
    code[:, 1::2] = torch.cos(position * freqs)
    return code.unsqueeze(0)


POSITIONAL_ENCODINGS = ("grid", "legacy_1d", "none")


class BottleneckTransformer(nn.Module):
    """Channels -> d_model (1x1 conv), + position code, L encoder layers, d_model -> channels.

    As in the paper's network there is no residual around the whole block. ``positional_encoding``:
    ``grid`` (default, any input size), ``legacy_1d`` (the released fixed-length code; needs
    ``positional_length``, the bottleneck's token count at the training patch) or ``none``.
    """

    def __init__(self, channels: int, d_model: int = 512, heads: int = 8, layers: int = 8, ff_dim: int = 512,
                 dropout: float = 0.3, conv_op=nn.Conv3d, positional: bool = True,
                 positional_encoding: str = "grid", positional_length: int | None = None,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        if positional_encoding not in POSITIONAL_ENCODINGS:
            raise ValueError(f"positional_encoding {positional_encoding!r}: expected one of {POSITIONAL_ENCODINGS}")
        self.proj_in = conv_op(channels, d_model, kernel_size=1)
        self.proj_out = conv_op(d_model, channels, kernel_size=1)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, ff_dim, dropout, layer_norm_eps) for _ in range(layers))
        self.positional = positional and positional_encoding != "none"
        self.positional_encoding = positional_encoding
        self.d_model = d_model
        if self.positional and positional_encoding == "legacy_1d":
            if not positional_length or positional_length < 1:
                raise ValueError("positional_encoding legacy_1d needs positional_length (tokens at the training patch)")
            self.register_buffer("legacy_pe", legacy_1d_position_code(int(positional_length), d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        t = self.proj_in(x).flatten(2).transpose(1, 2)  # [B, N, d_model]
        if self.positional and self.positional_encoding == "legacy_1d":
            if t.shape[1] != self.legacy_pe.shape[1]:
                raise ValueError(f"the released (legacy_1d) positional code is fixed to {self.legacy_pe.shape[1]} "
                                 f"bottleneck tokens (the training patch); this input gives {t.shape[1]} "
                                 f"({'x'.join(map(str, spatial))}): predict with the training patch size")
            t = t + self.legacy_pe.to(t.dtype)
        elif self.positional:
            t = t + sinusoidal_position_code(tuple(spatial), self.d_model, t.device, t.dtype)
        for layer in self.layers:
            t = layer(t)
        t = t.transpose(1, 2).reshape(x.shape[0], self.d_model, *spatial)
        return self.proj_out(t)
