"""The study's networks: Efficient Attention against its formula, PanSegNet and AX-Unet shapes and gradients;
transunet3d (softmax attention, token limit) and LinTransUNet (parameter count of the committed plan)."""

import math

import pytest
import torch

from helpers import REPO
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


# ---- transunet3d: PanSegNet with softmax attention ------------------------------------------------
PLAN = REPO / "benchmarks" / "data" / "panseg_t1_plans.json"


def naive_softmax_attention(x, attn):
    """softmax(QKᵀ/√d)·V per head, element by element, from the module's own projection weights."""
    n, c = x.shape
    heads = attn.heads
    d = c // heads
    w, b = attn.qkv.weight, attn.qkv.bias
    qkv = torch.stack([w @ x[i] + b for i in range(n)])  # [n, 3c]
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    out = torch.zeros(n, c, dtype=x.dtype)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        for i in range(n):
            scores = [float((q[i, sl] @ k[j, sl]).detach()) / math.sqrt(d) for j in range(n)]
            top = max(scores)
            e = [math.exp(s - top) for s in scores]
            out[i, sl] = sum(e[j] / sum(e) * v[j, sl] for j in range(n))
    return torch.stack([attn.out.weight @ out[i] + attn.out.bias for i in range(n)])


def test_transunet3d_attention_equals_softmax_formula():
    from workflow_scripts.models.transunet3d import MultiHeadSoftmaxAttention

    torch.manual_seed(3)
    attn = MultiHeadSoftmaxAttention(8, 2).double().eval()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    assert torch.allclose(attn(x)[0], naive_softmax_attention(x[0], attn), atol=1e-10)
    assert not torch.allclose(attn(x), MultiHeadEfficientAttention.forward(attn, x), atol=1e-3)  # really another attention


def test_transunet3d_is_pansegnet_with_softmax_attention():
    from workflow_scripts.models.transunet3d import MultiHeadSoftmaxAttention, TransUNet3D

    options = dict(d_model=16, heads=2, layers=2, ff_dim=16, dropout=0.0)
    torch.manual_seed(0)
    pan, trans = PanSegNet(tiny_unet(), **options), TransUNet3D(tiny_unet(), **options)
    assert {k: v.shape for k, v in pan.state_dict().items()} == {k: v.shape for k, v in trans.state_dict().items()}
    assert all(type(layer.attn) is MultiHeadSoftmaxAttention for layer in trans.bottleneck.layers)
    trans.load_state_dict(pan.state_dict())  # same weights: only the attention differs
    pan.eval(), trans.eval()
    pan.decoder.deep_supervision = trans.decoder.deep_supervision = False
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        assert pan(x).shape == trans(x).shape and not torch.allclose(pan(x), trans(x), atol=1e-4)
    outputs = TransUNet3D(tiny_unet(), **options)(torch.randn(2, 1, 8, 16, 16))
    sum(o.square().mean() for o in outputs).backward()


def plans_and_configuration(path=PLAN, network=None):
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads(path.read_text())
    if network is not None:
        plans["panseg_network"] = network
    pm = PlansManager(plans)
    return pm, pm.get_configuration("3d_fullres")


def test_transunet3d_token_limit_is_checked_before_training():
    from workflow_scripts.models.transunet3d import MultiHeadSoftmaxAttention, TooManyTokens, bottleneck_tokens
    from workflow_scripts.trainers.transunet3d import TransUNet3DTrainer

    small = dict(d_model=16, heads=2, layers=1, ff_dim=16)
    pm, cm = plans_and_configuration(network=small)
    # the committed PanSegData-sized plan (56 x 192 x 192 down to 7 x 6 x 6) and the demo's plan
    # (24 x 48 x 56 down to 6 x 6 x 7) stay far below the default limit
    assert bottleneck_tokens(cm.patch_size, cm.network_arch_init_kwargs["strides"]) == 252
    assert bottleneck_tokens([24, 48, 56], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]) == 252
    net = TransUNet3DTrainer.build_network_architecture(pm, cm, 1, 2, True)
    assert net.max_tokens == 4096
    pm, cm = plans_and_configuration(network={**small, "max_tokens": 200})
    with pytest.raises(TooManyTokens, match=r"patch \[56, 192, 192\] has 252 bottleneck tokens, more than max_tokens=200"):
        TransUNet3DTrainer.build_network_architecture(pm, cm, 1, 2, True)
    with pytest.raises(TooManyTokens, match="11 bottleneck tokens"):
        MultiHeadSoftmaxAttention(8, 2, max_tokens=10)(torch.randn(1, 11, 8))


# ---- lintransunet -------------------------------------------------------------------------------
def lintransunet_closed_form(features, kernels, strides, in_channels=1, classes=2, heads=8, layers=8, skips=2):
    """Parameters of LinTransUNet from its description (docs/facts.md §9), 3-D, counted by hand."""
    prod = math.prod

    def conv(cin, cout, k, bias=True):
        return cin * cout * prod(k) + (cout if bias else 0)

    def norm(c):  # InstanceNorm with affine weight and bias
        return 2 * c

    def res_block(cin, cout, k, strided):
        n = conv(cin, cout, k) + norm(cout) + conv(cout, cout, k) + norm(cout)
        if strided or cin != cout:  # 1x1 conv (no bias) + norm on the skip
            n += conv(cin, cout, [1, 1, 1], bias=False) + norm(cout)
        return n

    def transformer_layer(d):  # q, k, v, out projections; feed-forward d -> 2d -> d; two LayerNorms
        return 4 * (d * d + d) + (d * 2 * d + 2 * d) + (2 * d * d + d) + 2 * 2 * d

    total = conv(in_channels, features[0], [3, 3, 3]) + norm(features[0])  # stem
    cin = features[0]
    for f, k, s in zip(features, kernels, strides):
        total += res_block(cin, f, k, any(x != 1 for x in s)) + res_block(f, f, k, False)
        cin = f
    n = len(features)
    for i, s in enumerate(range(n - 2, -1, -1)):
        f = features[s]
        total += features[s + 1] * f * prod(strides[s + 1])  # transposed conv, no bias
        if i < skips:  # 1x1 conv + ReLU, then L x (transformer layer + depthwise 3x3x3 conv with bias)
            total += conv(f, f, [1, 1, 1]) + layers * (transformer_layer(f) + f * 27 + f)
        else:  # attention gate: W_skip, W_up, W_out (f -> f), psi (f -> 1); InstanceNorm without parameters
            total += 3 * conv(f, f, [1, 1, 1]) + conv(f, 1, [1, 1, 1])
        total += res_block(2 * f, f, kernels[s], False) + res_block(f, f, kernels[s], False)
        total += f * classes  # deep-supervision head, no bias
    return total


def test_lintransunet_parameter_count_on_the_committed_plan():
    from workflow_scripts.trainers.lintransunet import LinTransUNetTrainer

    pm, cm = plans_and_configuration(network={})
    arch = cm.network_arch_init_kwargs
    assert list(arch["features_per_stage"]) == [32, 64, 128, 256, 320, 320]  # nnU-Net's own cap
    net = LinTransUNetTrainer.build_network_architecture(pm, cm, 1, 2, True)
    features = [32, 64, 128, 256, 512, 512]  # the authors' cap of 512
    assert net.features == features
    expected = lintransunet_closed_form(features, arch["kernel_sizes"], arch["strides"])
    assert sum(p.numel() for p in net.parameters()) == expected
    assert 100e6 < expected < 200e6  # two 8-layer transformers of width 512 and 256


def test_lintransunet_structure_shapes_and_gradients():
    from workflow_scripts.models.lintransunet import AttentionGate, LinTransUNet, SkipTransformer

    torch.manual_seed(4)
    net = LinTransUNet(1, 2, [4, 8, 16, 16], [[1, 3, 3]] + [[3, 3, 3]] * 3,
                       [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]], True, heads=2, layers=2, dropout=0.0)
    kinds = [type(a) for a in net.decoder.attention]  # lowest resolution first
    assert kinds == [SkipTransformer, SkipTransformer, AttentionGate]
    assert net.encoder.strides[1] == (1, 2, 2) and net.decoder.transpconvs[0].kernel_size == (1, 2, 2)
    outputs = net(torch.randn(2, 1, 4, 32, 32))
    assert [tuple(o.shape[2:]) for o in outputs] == [(4, 32, 32), (4, 16, 16), (2, 8, 8)]
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing
    net.eval()
    net.decoder.deep_supervision = False
    with torch.no_grad():
        assert net(torch.randn(1, 1, 8, 48, 40)).shape == (1, 2, 8, 48, 40)


def test_lintransunet_features_and_options():
    from workflow_scripts.models.lintransunet import LinTransUNet, lintransunet_features

    assert lintransunet_features([32, 64, 128, 256, 320, 320]) == [32, 64, 128, 256, 512, 512]
    assert lintransunet_features([8, 16, 32, 64]) == [8, 16, 32, 64]  # the demo's override: unchanged
    assert lintransunet_features([8, 8, 16]) == [8, 8, 16]
    assert lintransunet_features([32, 64, 128, 256, 320, 320], max_features=320) == [32, 64, 128, 256, 320, 320]
    with pytest.raises(ValueError, match="4 channels cannot be split into 8 heads"):
        LinTransUNet(1, 2, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
    with pytest.raises(ValueError, match="unknown network options"):
        LinTransUNet(1, 2, [8, 16], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], d_model=64)
