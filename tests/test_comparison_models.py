"""The paper's comparison models on the shared tiny study: each trainable one trains a few
iterations, predicts its validation cases, and its bundle segments a scan.

One fold each, trained directly on the tiny study's preprocessed data (tests/conftest.py's
tiny_study), so the whole-workflow run does not grow by two models x three folds. The network
options go into the model's plans.json, so prediction and the bundle rebuild the trained network
(a rebuilt network of another shape would not take the checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from helpers import REPO

pytestmark = pytest.mark.workflow

MODELS = {
    "transunet3d": ("workflow_scripts.trainers.transunet3d:TransUNet3DTrainer",
                    {"d_model": 16, "heads": 2, "layers": 1, "ff_dim": 16, "dropout": 0.1}),
    "lintransunet": ("workflow_scripts.trainers.lintransunet:LinTransUNetTrainer",
                     {"heads": 2, "layers": 1, "dropout": 0.1}),
}


def _run(args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", *args], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request, tiny_study, tmp_path_factory):
    """One fold trained through the training step (its recipe), then its out-of-fold cases predicted
    through the prediction step, as the workflow's train and predict_oof jobs do."""
    from workflow_scripts.nnunet import recipe

    model = request.param
    trainer, network = MODELS[model]
    results = tmp_path_factory.mktemp(f"train-{model}")
    folder = results / "Dataset901_T1" / f"{trainer.partition(':')[2]}__nnUNetPlans__3d_fullres"
    r = recipe.training_recipe(modality="T1", dataset_id=901, experiment="cv", fold=0, trainer=trainer,
                               configuration="3d_fullres", network=network, plan={"planner": "ExperimentPlanner"},
                               plans="nnUNetPlans", folds=3, split_seed=12345, cases="-",
                               training={"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1,
                                         "save_every": 1, "optimizer": "adamw", "initial_lr": 0.003, "seed": 1})
    splits = tiny_study / "data" / "splits" / "T1.json"
    _run(["workflow_scripts.nnunet.train", "--recipe", recipe.dumps(r), "--preprocessed-root",
          str(tiny_study / "data" / "nnunet_preprocessed" / "T1"), "--checkpoint",
          str(folder / "fold_0" / "checkpoint_final.pth"), "--splits", str(splits), "--device", "cpu"])
    tables = [str(t) for t in sorted((tiny_study / "data" / "prepared" / "T1").glob("*.tsv"))
              if not t.name.endswith(".excluded.tsv") and t.stem != "NYU"]
    _run(["workflow_scripts.nnunet.predict", "--cases", *tables, "--splits", str(splits), "--fold", "0", "--model-folder",
          str(folder), "--checkpoints", str(folder / "fold_0" / "checkpoint_final.pth"), "--trainer", trainer,
          "--out", str(results / "oof_fold_0"), "--no-mirroring", "--device", "cpu"], cwd=tiny_study)
    return model, trainer, network, folder, results / "oof_fold_0", json.loads(splits.read_text())[0]["val"]


def test_trains_and_predicts_its_validation_cases(trained):
    model, trainer, network, folder, oof, held_out = trained
    fold = folder / "fold_0"
    assert (fold / "checkpoint_final.pth").exists()
    info = json.loads((fold / "train_info.json").read_text())
    assert info["recipe"]["trainer"] == trainer and info["recipe"]["network"] == network
    masks = sorted(oof.glob("*.nii.gz"))
    assert sorted(m.name[: -len(".nii.gz")] for m in masks) == sorted(held_out) and masks
    for m in masks:
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(m))))) <= {0, 1}
    assert len(pd.read_csv(fold / "training_curve.tsv", sep="\t")) == 1
    # the network options travel in the model's plans, for prediction and bundles
    assert json.loads((folder / "plans.json").read_text())["panseg_network"] == network


def test_bundle_segments_a_scan_like_the_prediction_step(trained, tiny_study, tmp_path):
    from workflow_scripts.deployment import bundle
    from workflow_scripts.deployment import segment

    model, trainer, network, folder, _, _ = trained
    tar = bundle.export_bundle(folder, [folder / "fold_0" / "checkpoint_final.pth"], trainer, "3d_fullres", "T1",
                               model, tmp_path / f"panseg_T1_{model}.tar")
    manifest = pd.read_csv(tiny_study / "data" / "manifest.tsv", sep="\t").set_index("case_id")
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(tiny_study / manifest.image["NYU_0001"], scans / "NYU_0001_0000.nii.gz")
    summary, info = segment.run(tar, scans, tmp_path / "seg", device="cpu", threads=1)
    assert list(summary.status) == ["ok"] and info["folds"] == [0]
    cases = tmp_path / "cases.tsv"
    pd.DataFrame({"case_id": ["NYU_0001"], "image": [str(scans / "NYU_0001_0000.nii.gz")]}).to_csv(cases, sep="\t",
                                                                                                      index=False)
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.nnunet.predict", "--cases", str(cases), "--model-folder",
                           str(folder), "--checkpoints", str(folder / "fold_0" / "checkpoint_final.pth"), "--trainer",
                           trainer, "--out", str(tmp_path / "pred"), "--no-mirroring", "--device", "cpu"],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg" / "masks" / "NYU_0001.nii.gz")))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / "NYU_0001.nii.gz")))
    assert np.array_equal(ours, ref)
