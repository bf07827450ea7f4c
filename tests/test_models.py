"""The study's networks: Efficient Attention against its formula, PanSegNet and AX-Unet shapes and gradients."""

import math

import pytest
import torch

from workflow_scripts.models.axunet import AXUNet, BoundaryAwareLoss
from workflow_scripts.models.efficient_attention import (
    BottleneckTransformer,
    MultiHeadEfficientAttention,
    efficient_attention,
    sinusoidal_position_code,
)
from workflow_scripts.models.pansegnet import PanSegNet

torch.set_num_threads(1)


def naive_efficient_attention(q, k, v):
    """The formula element by element: softmax of each query row over features, of each key column over tokens."""
    n, d = q.shape
    q_hat = torch.zeros_like(q)
    k_hat = torch.zeros_like(k)
    for i in range(n):
        e = torch.exp(q[i] - q[i].max())
        q_hat[i] = e / e.sum() / math.sqrt(d)
    for j in range(d):
        e = torch.exp(k[:, j] - k[:, j].max())
        k_hat[:, j] = e / e.sum()
    out = torch.zeros(n, v.shape[1], dtype=q.dtype)
    for i in range(n):
        for c in range(v.shape[1]):
            out[i, c] = sum(q_hat[i, a] * sum(k_hat[t, a] * v[t, c] for t in range(n)) for a in range(d))
    return out


def test_efficient_attention_equals_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 4, generator=g, dtype=torch.float64) for _ in range(3))
    fast = efficient_attention(q[None, None], k[None, None], v[None, None])[0, 0]
    assert torch.allclose(fast, naive_efficient_attention(q, k, v), atol=1e-5)


def test_permuting_tokens_permutes_output_without_position_code():
    torch.manual_seed(0)
    block = BottleneckTransformer(6, d_model=16, heads=4, layers=2, ff_dim=32, dropout=0.0, positional=False).eval()
    attn = MultiHeadEfficientAttention(16, 4).eval()
    x = torch.randn(2, 11, 16)
    perm = torch.randperm(11)
    assert torch.allclose(attn(x)[:, perm], attn(x[:, perm]), atol=1e-6)
    vol = torch.randn(1, 6, 3, 4, 5)
    flat = vol.flatten(2)
    perm = torch.randperm(flat.shape[2])
    shuffled = flat[:, :, perm].reshape(vol.shape)
    out, out_shuffled = block(vol).flatten(2), block(shuffled).flatten(2)
    assert torch.allclose(out[:, :, perm], out_shuffled, atol=1e-5)


def test_position_code_any_size_and_consistent():
    small = sinusoidal_position_code((2, 3, 4), 24)
    big = sinusoidal_position_code((5, 6, 7), 24)
    assert small.shape == (24, 24) and big.shape == (210, 24)
    # the same (z, y, x) index has the same code in both grids
    assert torch.allclose(small.reshape(2, 3, 4, 24)[1, 2, 3], big.reshape(5, 6, 7, 24)[1, 2, 3])


def tiny_unet(n_stages=3):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(1, n_stages, [4, 8, 16][:n_stages], torch.nn.Conv3d, 3, [1, 2, 2][:n_stages],
                         2, 2, 2, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=True)


def test_pansegnet_gradients_reach_every_parameter():
    torch.manual_seed(1)
    net = PanSegNet(tiny_unet(), d_model=16, heads=2, layers=2, ff_dim=16, dropout=0.0)
    outputs = net(torch.randn(2, 1, 8, 16, 16))
    assert isinstance(outputs, (list, tuple)) and outputs[0].shape == (2, 2, 8, 16, 16)
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing


def test_pansegnet_runs_on_other_input_sizes():
    net = PanSegNet(tiny_unet(), d_model=16, heads=2, layers=1, ff_dim=16, dropout=0.0).eval()
    net.decoder.deep_supervision = False
    with torch.no_grad():
        for shape in [(8, 16, 16), (12, 24, 20), (4, 8, 32)]:
            assert net(torch.randn(1, 1, *shape)).shape == (1, 2, *shape)


def test_paper_configuration_defaults():
    net = PanSegNet(tiny_unet())
    t = net.bottleneck
    assert t.d_model == 512 and len(t.layers) == 8 and t.layers[0].attn.heads == 8
    assert t.layers[0].ff[0].out_features == 512 and t.layers[0].ff[2].p == 0.3


def test_axunet_shapes_and_gradients():
    torch.manual_seed(2)
    net = AXUNet(1, 2, [4, 8, 16, 32], [[1, 1], [2, 2], [2, 2], [2, 2]], [[3, 3]] * 4, deep_supervision=True)
    out = net(torch.randn(2, 1, 32, 48))
    assert [o.shape[2:] for o in out] == [(32, 48), (16, 24), (8, 12)]
    target = [torch.randint(0, 2, (2, 1, *o.shape[2:])).float() for o in out]
    loss = sum(BoundaryAwareLoss()(o, t) for o, t in zip(out, target))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise, "depthwise-separable convolutions expected"
    net.decoder.deep_supervision = False
    assert net(torch.randn(1, 1, 32, 48)).shape == (1, 2, 32, 48)


def test_boundary_aware_loss_prefers_the_right_answer():
    target = torch.zeros(1, 1, 16, 16)
    target[:, :, 4:12, 5:11] = 1
    right = torch.cat([1 - target, target], 1) * 20 - 10
    wrong = torch.cat([target, 1 - target], 1) * 20 - 10
    loss = BoundaryAwareLoss()
    assert loss(right, target) < 0.05 < loss(wrong, target)


@pytest.mark.parametrize("layers", [0, 3])
def test_transformer_block_keeps_shape(layers):
    block = BottleneckTransformer(12, d_model=24, heads=3, layers=layers, ff_dim=8, dropout=0.1)
    assert block(torch.randn(1, 12, 2, 3, 4)).shape == (1, 12, 2, 3, 4)
