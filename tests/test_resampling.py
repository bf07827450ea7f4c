"""Prediction speed and memory tweaks change nothing that matters: identical resampling, same logits."""

import numpy as np
import pytest
import torch

from workflow_scripts.nnunet import resampling
from workflow_scripts.nnunet.resampling import resample_logits_to_shape

torch.set_num_threads(1)


@pytest.mark.parametrize("shape, new_shape, spacing, new_spacing", [
    ((2, 12, 29, 29), (20, 64, 64), [4.0, 2.75, 2.75], [2.5, 1.25, 1.25]),  # CT-like: thick -> thin slices
    ((2, 21, 45, 54), (22, 52, 63), [4.0, 2.75, 2.75], [3.9, 2.36, 2.36]),  # demo-like
    ((3, 10, 30, 33), (37, 31, 50), [5.0, 1.0, 1.0], [1.3, 0.9, 0.7]),
    ((2, 40, 12, 41), (45, 31, 44), [1.0, 5.0, 1.0], [0.9, 1.9, 0.8]),  # anisotropic along axis 1
    ((2, 40, 41, 12), (45, 44, 31), [1.0, 1.0, 5.0], [0.9, 0.8, 1.9]),  # ... and axis 2
    ((2, 9, 20, 20), (9, 30, 30), [4.0, 1.0, 1.0], [4.0, 0.7, 0.7]),  # no change along the thick axis
    ((2, 20, 20, 20), (25, 26, 27), [1.0, 1.0, 1.0], [0.8, 0.8, 0.7]),  # isotropic: nnU-Net's own path
])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_lean_resampling_equals_nnunet(monkeypatch, shape, new_shape, spacing, new_spacing, dtype):
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    monkeypatch.setattr(resampling, "SLAB_VOXELS", 700)  # many slabs
    x = np.random.default_rng(0).normal(size=shape).astype(dtype)
    kwargs = dict(is_seg=False, order=1, order_z=0, force_separate_z=None)  # nnU-Net's plan for probabilities
    ours = resample_logits_to_shape(torch.from_numpy(x.copy()), new_shape, spacing, new_spacing, **kwargs)
    theirs = resample_data_or_seg_to_shape(x.copy(), new_shape, spacing, new_spacing, **kwargs)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def test_lean_configuration_only_swaps_probability_resampling():
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from workflow_scripts.nnunet.resampling import lean_configuration

    conf = {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": [24, 48, 56], "median_image_size_in_voxels": [20, 40, 50], "spacing": [4.0, 2.75, 2.75],
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}}
    lean = lean_configuration(ConfigurationManager(conf))
    assert lean.resampling_fn_probabilities.func is resample_logits_to_shape
    assert lean.resampling_fn_probabilities.keywords == conf["resampling_fn_probabilities_kwargs"]
    assert lean.resampling_fn_data.func.__name__ == "resample_data_or_seg_to_shape"
    assert lean.patch_size == [24, 48, 56]


def test_duplicated_tiles_give_the_same_logits():
    """On the CPU a small network predicts each tile in a batch of two (PyTorch's fast kernel); the
    tile's logits do not change beyond float rounding."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from workflow_scripts.nnunet.predict import _predictor_class

    torch.manual_seed(0)
    net = PlainConvUNet(1, 4, [8, 16, 32, 64], torch.nn.Conv3d, 3, [1, 2, 2, [1, 2, 2]], 2, 2, 2, conv_bias=True,
                        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}).eval()
    predictor = _predictor_class()(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.network = net
    tile = torch.randn(1, 1, 24, 48, 56)
    single = predictor._internal_maybe_mirror_and_predict(tile)
    predictor.duplicate_tiles = True
    double = predictor._internal_maybe_mirror_and_predict(tile)
    assert double.shape == single.shape == (1, 2, 24, 48, 56)
    assert torch.allclose(single, double, atol=1e-4)


@pytest.mark.parametrize("features, patch, device, expected", [
    ([8, 16, 32, 64], [24, 48, 56], "cpu", True),  # the demo's network: slow kernel for one tile
    ([32, 64, 128, 256, 320], [80, 160, 160], "cpu", False),  # nnU-Net's own size: fast kernel already
    ([8, 16, 32, 64], [24, 48, 56], "cuda", False),
    ([], [24, 48, 56], "cpu", False),  # a network without features_per_stage: left alone
])
def test_which_networks_duplicate_tiles(features, patch, device, expected):
    from types import SimpleNamespace

    from workflow_scripts.nnunet.predict import duplicate_tiles

    conf = SimpleNamespace(network_arch_init_kwargs={"features_per_stage": features}, patch_size=patch)
    assert duplicate_tiles(conf, torch.device(device)) is expected
