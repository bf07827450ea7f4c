"""The folder-level evaluation command and its errors."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import blob, write_nifti
from helpers import REPO
from workflow_scripts.evaluation.metrics import case_metrics


def run(*args):
    return subprocess.run([sys.executable, "-m", "workflow_scripts.evaluation.evaluate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_folder_evaluation(tmp_path):
    for case, shift in (("a", 0), ("b", 1)):
        write_nifti(tmp_path / "ref" / f"{case}.nii.gz", blob(), spacing=(0.8, 0.8, 2.5))
        write_nifti(tmp_path / "pred" / f"{case}.nii.gz", np.roll(blob(), shift, axis=0), spacing=(0.8, 0.8, 2.5))
    out = tmp_path / "m.csv"
    proc = run("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out)
    assert list(df.case) == ["a", "b"]
    for col in ["case", "dice", "hd95_mm", "precision", "recall", "vol_pred_ml", "vol_ref_ml"]:
        assert col in df
    assert df.dice[0] == 1.0 and df.hd95_mm[0] == 0.0
    # Shifted one slice: the CLI gives what metrics.case_metrics gives on the arrays (spacing reversed).
    expected = case_metrics(np.roll(blob(), 1, axis=0), blob(), (2.5, 0.8, 0.8))
    assert 0 < df.dice[1] < 1
    assert df.dice[1] == pytest.approx(expected["dice"], rel=1e-5)
    assert df.hd95_mm[1] == pytest.approx(expected["hd95_mm"], rel=1e-5)


def test_missing_prediction_and_geometry_errors(tmp_path):
    write_nifti(tmp_path / "ref" / "a.nii.gz", blob())
    write_nifti(tmp_path / "ref" / "b.nii.gz", blob())
    write_nifti(tmp_path / "pred" / "a.nii.gz", blob(), spacing=(2, 1, 1))
    proc = run("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "m.csv"))
    assert proc.returncode != 0 and "no prediction for 1" in proc.stderr
    write_nifti(tmp_path / "pred" / "b.nii.gz", blob())
    proc = run("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "m.csv"))
    assert proc.returncode != 0 and "a.nii.gz" in proc.stderr and "geometry" in proc.stderr
    assert not (tmp_path / "m.csv").exists()


def test_workflow_table_carries_setting_folds_participant_and_nsd(tmp_path):
    from workflow_scripts.evaluation.evaluate import evaluate_cases

    rows = []
    for case, shift in (("AHN_0001", 0), ("AHN_0002", 1)):
        label = write_nifti(tmp_path / "ref" / f"{case}.nii.gz", blob(), spacing=(0.8, 0.8, 2.5))
        write_nifti(tmp_path / "pred" / f"{case}.nii.gz", np.roll(blob(), shift, axis=0), spacing=(0.8, 0.8, 2.5))
        rows.append(dict(case_id=case, modality="T1", center="AHN", participant_id="AHN-P1", role="train-cv",
                         data_source="synthetic", label=str(label)))
    cases = pd.DataFrame(rows)
    df = evaluate_cases(cases, tmp_path / "pred", "nnunet", "cv", n_folds=5, nsd_tolerance_mm=1.0)
    assert list(df.columns[:8]) == ["case", "modality", "model", "setting", "n_folds", "center", "participant_id",
                                    "role"]
    assert (df.setting == "cv").all() and (df.n_folds == 5).all() and (df.participant_id == "AHN-P1").all()
    expected = case_metrics(np.roll(blob(), 1, axis=0), blob(), (2.5, 0.8, 0.8), nsd_tolerance_mm=1.0)
    assert df.nsd.tolist() == [1.0, pytest.approx(expected["nsd"])] and (df.nsd_tolerance_mm == 1.0).all()
    loco = evaluate_cases(cases, tmp_path / "pred", "nnunet", "loco")
    assert (loco.setting == "loco").all() and (loco.n_folds == "").all()
    with pytest.raises(ValueError, match="setting"):
        evaluate_cases(cases, tmp_path / "pred", "nnunet", "5-fold-cv")
    cases.to_csv(tmp_path / "cases.tsv", sep="\t", index=False)
    proc = run("--cases", str(tmp_path / "cases.tsv"), "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "m.tsv"))
    assert proc.returncode != 0 and "--setting" in proc.stderr
    proc = run("--cases", str(tmp_path / "cases.tsv"), "--pred", str(tmp_path / "pred"), "--setting", "cv",
               "--out", str(tmp_path / "m.tsv"))
    assert proc.returncode != 0 and "--n-folds" in proc.stderr
