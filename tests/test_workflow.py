"""The whole chain on a tiny SYNTHETIC study: every declared output exists and makes sense."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from helpers import REPO, job_counts, snakemake

pytestmark = pytest.mark.workflow
TINY = REPO / "tests" / "data" / "tiny.yaml"
MODELS = ["nnunet", "pansegnet", "unet2d", "axunet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("wf")
    snakemake("--cores", "2", "--configfile", str(TINY), workdir=work, timeout=1500)
    return work


def test_manifest(run_dir):
    m = pd.read_csv(run_dir / "data" / "manifest.tsv", sep="\t")
    assert len(m) == 16 and set(m.center) == {"AHN", "MCF", "NWU", "NYU"}
    assert set(m.role) == {"train-cv", "external"} and (m.data_source == "synthetic").all()
    assert m.participant_id.nunique() < len(m)  # repeat scans grouped


def test_folds_grouped_by_participant(run_dir):
    folds = pd.read_csv(run_dir / "data" / "splits" / "T1.tsv", sep="\t")
    assert len(folds) == 12 and folds.fold.nunique() == 5
    assert (folds.groupby("participant_id").fold.nunique() == 1).all()


def test_per_case_tables(run_dir):
    per_case = pd.read_csv(run_dir / "results" / "tables" / "per_case.tsv", sep="\t", keep_default_na=False)
    assert len(per_case) == 16 * len(MODELS) and sorted(per_case.model.unique()) == sorted(MODELS)
    for col in ["case", "dice", "hd95_mm", "precision", "recall", "vol_pred_ml", "vol_ref_ml", "role", "center"]:
        assert col in per_case
    assert per_case.groupby("role").size().to_dict() == {"external": 4 * len(MODELS), "train-cv": 12 * len(MODELS)}
    dice = per_case.dice.astype(float)
    assert ((dice >= 0) & (dice <= 1)).all()
    assert (per_case.vol_ref_ml.astype(float) > 10).all()
    summary = pd.read_csv(run_dir / "results" / "tables" / "summary.csv")
    assert {"AHN", "NYU", "all external", "all train-cv", "all"} <= set(summary.scope)
    assert (summary.n[summary.scope == "all"] == 16).all() and len(summary[summary.scope == "all"]) == len(MODELS)
    assert "SYNTHETIC" in (run_dir / "results" / "tables" / "summary.md").read_text()


@pytest.mark.parametrize("model", MODELS)
def test_masks_in_original_geometry(run_dir, model):
    m = pd.read_csv(run_dir / "data" / "manifest.tsv", sep="\t").set_index("case_id")
    for case, kind in [("NYU_0001", "ensemble_masks"), ("AHN_0001", "cv_masks")]:
        center = case.split("_")[0]
        mask = sitk.ReadImage(str(run_dir / "results" / "T1" / model / "centers" / center / kind / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(run_dir / m.image[case]))
        assert mask.GetSize() == image.GetSize()
        assert np.allclose(mask.GetDirection(), image.GetDirection())
        assert np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
        assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


@pytest.mark.parametrize("model, run", [("nnunet", "NnUNetTrainer__nnUNetPlans__3d_fullres"),
                                        ("pansegnet", "PanSegNetTrainer__nnUNetPlans__3d_fullres"),
                                        ("unet2d", "UNet2DTrainer__nnUNetPlans__2d"),
                                        ("axunet", "AXUNetTrainer__nnUNetPlans__2d")])
def test_training_outputs(run_dir, model, run):
    folds = sorted((run_dir / "results" / "T1" / model / "Dataset901_T1" / run).glob("fold_*"))
    assert len(folds) == 5
    for f in folds:
        assert (f / "checkpoint_final.pth").exists() and (f / "train_info.json").exists()
        curve = pd.read_csv(f / "training_curve.tsv", sep="\t")
        assert len(curve) == 2 and curve.train_losses.notna().all()


def test_second_run_does_nothing(run_dir):
    proc = snakemake("-n", "--configfile", str(TINY), workdir=run_dir, timeout=120)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_new_budget_retrains_only_training_and_after(run_dir, tmp_path):
    import yaml

    cfg = yaml.safe_load(TINY.read_text())
    cfg["training"]["epochs"] = 3
    path = tmp_path / "more.yaml"
    path.write_text(yaml.safe_dump(cfg))
    counts = job_counts(snakemake("-n", "--configfile", str(path), workdir=run_dir, timeout=120).stdout)
    assert counts.get("train") == 5 * len(MODELS)
    for upstream in ("synthetic_source", "prepare_center", "preprocess", "split", "nnunet_raw"):
        assert upstream not in counts


def test_interrupted_training_resumes(run_dir, tmp_path):
    """Kill a training run after its first checkpoint; the re-run continues from it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "workflow_scripts.train", "--preprocessed-root",
            str(run_dir / "data" / "nnunet_preprocessed" / "T1"), "--raw-root", str(run_dir / "data" / "nnunet_raw" / "T1"),
            "--results-root", str(tmp_path / "res"),
            "--dataset-id", "901", "--modality", "T1", "--trainer", "workflow_scripts.trainers.nnunet:NnUNetTrainer",
            "--fold", "0", "--splits", str(run_dir / "data" / "splits" / "T1.json"), "--epochs", "6",
            "--iterations", "2", "--val-iterations", "1", "--save-every", "1", "--optimizer", "adamw", "--lr", "0.003",
            "--no-mirroring"]
    fold = tmp_path / "res" / "Dataset901_T1" / "NnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (fold / "checkpoint_latest.pth").exists():
        assert proc.poll() is None, "training ended before writing a checkpoint"
        assert time.time() < deadline, "no checkpoint_latest.pth within 5 minutes"
        time.sleep(0.5)
    time.sleep(1.0)  # let torch.save finish writing
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (fold / "checkpoint_final.pth").exists()
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming fold 0" in out.stderr + out.stdout
    assert (fold / "checkpoint_final.pth").exists()
    assert len(pd.read_csv(fold / "training_curve.tsv", sep="\t")) == 6


@pytest.mark.parametrize("model", MODELS)
def test_bundles_segment_like_the_workflow(run_dir, tmp_path, model):
    """`all` exports one bundle per model; segmenting with it (2-D models too) gives exactly the
    workflow's ensemble mask."""
    import shutil

    from workflow_scripts import segment

    m = pd.read_csv(run_dir / "data" / "manifest.tsv", sep="\t").set_index("case_id")
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(run_dir / m.image["NYU_0001"], scans / "NYU_0001_0000.nii.gz")
    bundle = run_dir / "results" / "T1" / model / "bundle" / f"panseg_T1_{model}.tar"
    summary, info = segment.run(bundle, scans, tmp_path / "out", device="cpu", threads=1)
    assert list(summary.status) == ["ok"] and info["folds"] == [0, 1, 2, 3, 4]
    ours = sitk.ReadImage(str(tmp_path / "out" / "masks" / "NYU_0001.nii.gz"))
    ref = sitk.ReadImage(str(run_dir / "results" / "T1" / model / "centers" / "NYU" / "ensemble_masks" / "NYU_0001.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))
