"""The plans name is configuration: another nnU-Net planner runs end to end (plan overrides included).

nnU-Net's residual-encoder planners write `nnUNetResEncUNetMPlans` (and describe their encoder with
`n_blocks_per_stage`); training, prediction and bundles must read those plans.
"""

from __future__ import annotations

import json
import tarfile

import pytest
import yaml

from helpers import REPO, snakemake

pytestmark = pytest.mark.workflow


def test_residual_encoder_planner_end_to_end(tmp_path):
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text(encoding="utf-8"))
    cfg["study"] = "resenc-test"
    cfg["sources"]["synthetic"].update(centers=["AHN", "MCF", "NYU"], cases_per_center=3)
    cfg["modalities"]["T1"].update(train_centers=["AHN", "MCF"], external_centers=["NYU"], leave_one_center_out=False,
                                   dataset_id=905)
    cfg.update(folds=2, models=["nnunet"], loco_models=[])
    cfg["plan"]["planner"] = "nnUNetPlannerResEncM"
    cfg["plan"]["configurations"] = {"3d_fullres": {"features_per_stage": [4, 8, 16], "batch_size": 2}}
    cfg["training"].update(epochs=1)
    path = tmp_path / "resenc.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    bundle = "results/T1/nnunet/bundle/panseg_T1_nnunet.tar"
    snakemake("results/tables/per_case.tsv", bundle, "--cores", "2", f"--configfile={path}", workdir=work,
              timeout=900)
    run = work / "results" / "T1" / "nnunet" / "Dataset905_T1" / "NnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
    plans = json.loads((run / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"].endswith("ResidualEncoderUNet")
    assert arch["arch_kwargs"]["features_per_stage"] == [4, 8, 16] and len(arch["arch_kwargs"]["n_blocks_per_stage"]) == 3
    assert all((run / f"fold_{k}" / "checkpoint_final.pth").exists() for k in range(2))
    per_case = (work / "results" / "tables" / "per_case.tsv").read_text().splitlines()
    assert len(per_case) == 1 + 9
    with tarfile.open(work / bundle) as tar:
        info = json.load(tar.extractfile("panseg_T1_nnunet/bundle.json"))
    assert info["trainer"].endswith("NnUNetTrainer")


def test_unknown_plans_name_is_a_clear_error(tmp_path):
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text(encoding="utf-8"))
    cfg["plan"]["planner"] = "MyOwnPlanner"
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    proc = snakemake("-n", f"--configfile={path}", workdir=tmp_path, timeout=120, check=False)
    assert proc.returncode != 0 and "set plan.plans_name" in proc.stdout + proc.stderr
