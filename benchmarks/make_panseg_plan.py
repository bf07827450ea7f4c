"""Write benchmarks/data/panseg_t1_plans.json: nnU-Net v2's own 2d and 3d_fullres plans for a PanSegData-sized
T1 dataset, made by nnU-Net's ExperimentPlanner from a dataset fingerprint (no images needed).

The fingerprint is ASSUMED, not read off PanSegData (we have no copy): median spacing 3.0 x 1.41 x
1.41 mm (z, y, x) and 72 x 256 x 256 voxels, typical of abdominal T1 MRI; 385 scans. The plan is
used by tests/test_models.py (LinTransUNet's parameter count) and benchmarks/bench_models.py.

    python benchmarks/make_panseg_plan.py        # rewrites benchmarks/data/panseg_t1_plans.json
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "data" / "panseg_t1_plans.json"
SPACING_ZYX = [3.0, 1.40625, 1.40625]
SHAPE_ZYX = [72, 256, 256]
N_SCANS = 385


def main():
    work = Path(tempfile.mkdtemp(prefix="panseg-plan-"))
    os.environ.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"), nnUNet_results=str(work / "res"))
    import SimpleITK as sitk

    name = "Dataset110_T1"
    raw, pre = work / "raw" / name, work / "pre" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    pre.mkdir(parents=True)
    for k in range(2):  # the planner opens one image to pick its reader; sizes come from the fingerprint
        img = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32))
        img.SetSpacing(SPACING_ZYX[::-1])
        sitk.WriteImage(img, str(raw / "imagesTr" / f"AHN_{k:04d}_0000.nii.gz"))
        sitk.WriteImage(sitk.Cast(img, sitk.sitkUInt8), str(raw / "labelsTr" / f"AHN_{k:04d}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "pancreas": 1},
                                                  "numTraining": 2, "file_ending": ".nii.gz"}))
    fingerprint = {
        "spacings": [SPACING_ZYX] * N_SCANS,
        "shapes_after_crop": [SHAPE_ZYX] * N_SCANS,
        "foreground_intensity_properties_per_channel": {"0": {"max": 1500.0, "mean": 400.0, "median": 380.0, "min": 0.0,
                                                              "percentile_00_5": 60.0, "percentile_99_5": 1100.0,
                                                              "std": 150.0}},
        "median_relative_size_after_cropping": 1.0,
    }
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    planner = ExperimentPlanner(name)
    planner.plan_experiment()
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["configurations"] = {k: plans["configurations"][k] for k in ("2d", "3d_fullres")}
    plans["panseg_note"] = ("nnU-Net's 2d and 3d_fullres plans for an ASSUMED PanSegData-sized T1 fingerprint (median "
                            f"spacing {SPACING_ZYX} mm, shape {SHAPE_ZYX}); benchmarks/make_panseg_plan.py")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(plans, indent=1) + "\n")
    for name, conf in plans["configurations"].items():
        arch = conf["architecture"]["arch_kwargs"]
        print(OUT, name, conf["patch_size"], conf["batch_size"], arch["features_per_stage"], arch["strides"])


if __name__ == "__main__":
    main()
