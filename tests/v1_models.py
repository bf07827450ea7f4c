"""nnU-Net v1 trained-model folders made by the tests: plans as v1's planner writes them, networks from
the real v1 code (PyPI nnunet 1.7.1) and a naive PanSegNet v1 written here from docs/facts.md §9's key list,
tiny trainings, and the folder layout (fold_<k>/model_final_checkpoint.model + .model.pkl)."""

from __future__ import annotations

import json
import math
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECKPOINT = "model_final_checkpoint.model"
V1_SAFE = [np._core.multiarray.scalar, np._core.multiarray._reconstruct, np.ndarray, np.dtype,
           *{type(np.dtype(t)) for t in ("f4", "f8", "i8", "i4", "b1")}]


# ---- plans -----------------------------------------------------------------------------------
ISOTROPIC = dict(patch=[16, 16, 16], spacing=[1.0, 1.0, 1.0], pool=[[2, 2, 2]] * 3, conv=[[3, 3, 3]] * 4)
ANISOTROPIC = dict(patch=[8, 32, 32], spacing=[3.0, 1.0, 1.0], pool=[[1, 2, 2], [2, 2, 2], [2, 2, 2]],
                   conv=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]])


def v1_plans(patch, spacing, pool, conv, base=4, scheme="nonCT", use_mask=False, transpose=(0, 1, 2),
             intensity=None) -> dict:
    """A 3d_fullres plans dict in nnU-Net v1's layout (ExperimentPlanner3D_v21), numpy values included."""
    stage = OrderedDict(batch_size=2, num_pool_per_axis=[int(sum(p[i] > 1 for p in pool)) for i in range(3)],
                        patch_size=np.array(patch), median_patient_size_in_voxels=np.array(patch) * 2,
                        current_spacing=np.array(spacing, dtype=float), original_spacing=np.array(spacing, dtype=float),
                        do_dummy_2D_data_aug=bool(max(spacing) / min(spacing) > 3), pool_op_kernel_sizes=pool,
                        conv_kernel_sizes=conv)
    intensity = intensity or {"mean": np.float64(40.0), "sd": np.float64(20.0), "median": np.float64(38.0),
                              "mn": np.float64(-5.0), "mx": np.float64(120.0),
                              "percentile_00_5": np.float64(1.0), "percentile_99_5": np.float64(110.0),
                              "local_props": OrderedDict()}
    tb = [int(i) for i in np.argsort(transpose)]
    return {"num_stages": 1, "num_modalities": 1, "modalities": {0: "MRI"},
            "normalization_schemes": OrderedDict({0: scheme}),
            "dataset_properties": {"intensityproperties": OrderedDict({0: intensity}), "modalities": {0: "MRI"},
                                   "all_classes": [1]},
            "list_of_npz_files": [], "original_spacings": [np.array(spacing)], "original_sizes": [np.array(patch) * 2],
            "preprocessed_data_folder": "/nonexistent", "num_classes": 1, "all_classes": [1], "base_num_features": base,
            "use_mask_for_norm": OrderedDict({0: use_mask}), "keep_only_largest_region": None,
            "min_region_size_per_class": None, "min_size_per_class": None,
            "transpose_forward": list(transpose), "transpose_backward": tb,
            "data_identifier": "nnUNetData_plans_v2.1", "plans_per_stage": {0: stage},
            "preprocessor_name": "GenericPreprocessor", "conv_per_stage": 2}


# ---- networks --------------------------------------------------------------------------------
def generic_unet(plans: dict):
    """The network nnUNetTrainerV2.initialize_network builds, from the real v1 code."""
    from nnunet.network_architecture.generic_UNet import Generic_UNet
    from nnunet.network_architecture.initialization import InitWeights_He

    stage = plans["plans_per_stage"][0]
    return Generic_UNet(plans["num_modalities"], plans["base_num_features"], plans["num_classes"] + 1,
                        len(stage["pool_op_kernel_sizes"]), plans["conv_per_stage"], 2, nn.Conv3d, nn.InstanceNorm3d,
                        {"eps": 1e-5, "affine": True}, nn.Dropout3d, {"p": 0, "inplace": True}, nn.LeakyReLU,
                        {"negative_slope": 1e-2, "inplace": True}, True, False, lambda x: x, InitWeights_He(1e-2),
                        stage["pool_op_kernel_sizes"], stage["conv_kernel_sizes"], False, True, True)


class NaivePositionalEncoding(nn.Module):
    def __init__(self, length: int, dim: int):
        super().__init__()
        pe = np.zeros((length, dim))
        for pos in range(length):  # sin at even, cos at odd channels, frequency 10000^(-i/dim) for channel pair i
            for i in range(0, dim, 2):
                angle = pos / 10000 ** (i / dim)
                pe[pos, i], pe[pos, i + 1] = math.sin(angle), math.cos(angle)
        self.register_buffer("pe", torch.tensor(pe, dtype=torch.float32)[None])


class NaiveMultiHead(nn.Module):
    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.linears = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(4))  # q, k, v, out

    def forward(self, x):  # [B, N, C], one head at a time, softmaxes written out
        q, k, v = (lin(x) for lin in self.linears[:3])
        d = x.shape[-1] // self.heads
        outs = []
        for h in range(self.heads):
            qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))
            q_hat = torch.exp(qh - qh.amax(-1, keepdim=True))
            q_hat = q_hat / q_hat.sum(-1, keepdim=True) / math.sqrt(d)  # over features
            k_hat = torch.exp(kh - kh.amax(-2, keepdim=True))
            k_hat = k_hat / k_hat.sum(-2, keepdim=True)  # over tokens
            context = torch.einsum("bnd,bne->bde", k_hat, vh)
            outs.append(torch.einsum("bnd,bde->bne", q_hat, context))
        return self.linears[3](torch.cat(outs, -1))


class NaiveLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ff: int):
        super().__init__()
        self.self_attn = NaiveMultiHead(d_model, heads)
        self.linear1, self.linear2 = nn.Linear(d_model, ff), nn.Linear(ff, d_model)
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(d_model, eps=1e-6), nn.LayerNorm(d_model, eps=1e-6)

    def forward(self, x):
        x = self.layer_norm1(x + self.self_attn(x))
        return self.layer_norm2(x + self.linear2(torch.nn.functional.gelu(self.linear1(x))))


class NaiveTransformer(nn.Module):
    def __init__(self, d_model, heads, ff, n):
        super().__init__()
        self.layers = nn.ModuleList(NaiveLayer(d_model, heads, ff) for _ in range(n))


class NaiveSelfAtten(nn.Module):
    """The released SelfAtten3DBlock's keys (docs/facts.md §9): linear_proj, pos_encode.pe, transformer.layers.*,
    linear_back_proj; applied to the bottleneck, replacing it."""

    def __init__(self, channels, tokens, d_model=16, heads=8, ff=16, n=2):
        super().__init__()
        self.linear_proj, self.linear_back_proj = nn.Linear(channels, d_model), nn.Linear(d_model, channels)
        self.pos_encode = NaivePositionalEncoding(tokens, d_model)
        self.transformer = NaiveTransformer(d_model, heads, ff, n)

    def forward(self, x):
        b, c, *spatial = x.shape
        t = self.linear_proj(x.flatten(2).transpose(1, 2)) + self.pos_encode.pe
        for layer in self.transformer.layers:
            t = layer(t)
        return self.linear_back_proj(t).transpose(1, 2).reshape(b, c, *spatial)


def naive_pansegnet(plans: dict, d_model=16, ff=16, n=2):
    """Generic_UNet with the released transformer block on the bottleneck (PanSegNet v1)."""
    net = generic_unet(plans)
    stage = plans["plans_per_stage"][0]
    tokens = int(np.prod(stage["patch_size"]) // np.prod(np.prod(stage["pool_op_kernel_sizes"], axis=0)))
    net.self_atten = NaiveSelfAtten(net.conv_blocks_context[-1][-1].output_channels, tokens, d_model, 8, ff, n)

    def forward(x):  # Generic_UNet.forward with the block after the bottleneck
        skips = []
        for d in range(len(net.conv_blocks_context) - 1):
            x = net.conv_blocks_context[d](x)
            skips.append(x)
        x = net.self_atten(net.conv_blocks_context[-1](x))
        for u in range(len(net.tu)):
            x = net.conv_blocks_localization[u](torch.cat((net.tu[u](x), skips[-(u + 1)]), dim=1))
        return net.seg_outputs[-1](x)

    net.forward = forward
    return net


def randomize(net, seed=0):
    """Non-trivial values everywhere (norm affines included), so a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


# ---- folders ---------------------------------------------------------------------------------
def save_v1_folder(root: Path, trainer: str, net, plans: dict, folds=(0,), plans_pkl=True, model_pkl=True,
                   postprocessing=None, pp_level="fold", validation=None) -> Path:
    """<root>/<trainer>__nnUNetPlansv2.1 in nnU-Net v1's layout, the checkpoint with numpy scalars as v1 saves."""
    folder = root / f"{trainer}__nnUNetPlansv2.1"
    for k in folds:
        fold = folder / f"fold_{k}"
        fold.mkdir(parents=True, exist_ok=True)
        state = {key: v.detach().clone() for key, v in net.state_dict().items()}
        torch.save({"epoch": 3, "state_dict": state, "optimizer_state_dict": {}, "lr_scheduler_state_dict": None,
                    "plot_stuff": ([np.float64(0.9), np.float64(0.5)], [np.float32(0.8)], [], [np.float64(0.3)]),
                    "best_stuff": (2, np.float64(0.5), np.float64(0.3))}, fold / CHECKPOINT)
        if model_pkl:
            init = (str(folder / "plans.pkl"), k, str(fold), str(root / "preprocessed"), True, 0, True, True, False)
            with open(fold / f"{CHECKPOINT}.pkl", "wb") as f:
                pickle.dump({"init": init, "name": trainer, "class": f"<class '{trainer}'>", "plans": plans}, f)
        if validation:
            (fold / "validation_raw").mkdir(exist_ok=True)
            rows = [{"1": {"Dice": 0.8}, "reference": f"/gt/{c}.nii.gz", "test": f"/pred/{c}.nii.gz"} for c in validation]
            (fold / "validation_raw" / "summary.json").write_text(json.dumps({"results": {"all": rows, "mean": {}}}))
    if plans_pkl:
        with open(folder / "plans.pkl", "wb") as f:
            pickle.dump(plans, f)
    if postprocessing is not None:
        target = folder if pp_level == "top" else folder / f"fold_{folds[0]}"
        (target / "postprocessing.json").write_text(json.dumps(postprocessing))
    return folder


# ---- tiny training ---------------------------------------------------------------------------
def synthetic_case(shape, rng, body_margin=2, blob_radius=0.22, contrast=60.0):
    """A body (nonzero, smaller than the image) with an ellipsoid 'organ' of higher intensity, and its label."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    centre = rng.uniform(-0.25, 0.25, 3)
    radii = blob_radius * rng.uniform(0.8, 1.25, 3) * np.array([1.6, 1, 1])
    label = (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 +
             ((xx - centre[2]) / radii[2]) ** 2) <= 1
    image = rng.normal(30, 8, shape) + contrast * label
    image[:, :body_margin] = 0  # outside the body: zero, so v1 crops
    image[:, :, -body_margin:] = 0
    return image.astype(np.float32), label.astype(np.uint8)


def train(net, images, labels, patch, iterations=120, lr=3e-3, seed=0):
    """Random patches (as v1 feeds them: already preprocessed), CE + soft Dice, Adam; seconds on a CPU."""
    g = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if hasattr(net, "do_ds"):
        net.do_ds = False
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(iterations):
        xs, ys = [], []
        for _ in range(2):
            i = g.integers(len(images))
            img, lab = images[i], labels[i]
            start = [g.integers(0, s - p + 1) for s, p in zip(img.shape, patch)]
            box = tuple(slice(a, a + p) for a, p in zip(start, patch))
            xs.append(img[box][None])
            ys.append(lab[box])
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()
        out = net(x)
        prob = torch.softmax(out, 1)[:, 1]
        dice = 1 - (2 * (prob * y).sum() + 1) / (prob.sum() + y.sum() + 1)
        loss = torch.nn.functional.cross_entropy(out, y) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net
