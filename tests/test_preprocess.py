"""Plan overrides applied to an nnU-Net plans dict."""

import copy

import pytest

from workflow_scripts.nnunet.preprocess import apply_overrides

PLANS = {
    "configurations": {
        "3d_fullres": {
            "patch_size": [28, 56, 72],
            "batch_size": 2,
            "spacing": [3.4, 2.4, 2.4],
            "architecture": {"arch_kwargs": {
                "n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2]}},
        }
    }
}


def test_fewer_stages_and_features():
    plans = apply_overrides(copy.deepcopy(PLANS), "3d_fullres", {"features_per_stage": [8, 16, 32], "batch_size": 4})
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 3 and arch["features_per_stage"] == [8, 16, 32]
    assert len(arch["strides"]) == 3 and len(arch["n_conv_per_stage_decoder"]) == 2
    assert plans["configurations"]["3d_fullres"]["batch_size"] == 4
    assert plans["panseg_overrides"]["3d_fullres"]["batch_size"] == 4


def test_no_override_leaves_plan_alone():
    assert apply_overrides(copy.deepcopy(PLANS), "3d_fullres", {}) == PLANS


@pytest.mark.parametrize("override, message", [
    ({"patch_size": [30, 56, 72]}, "not divisible"),
    ({"features_per_stage": [8] * 6}, "6 stages requested"),
    ({"patch_size": [28, 56]}, "needs 3 values"),
    ({"dropout": 0.1}, "unknown keys"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(copy.deepcopy(PLANS), "3d_fullres", override)
