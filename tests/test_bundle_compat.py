"""A bundle exported before the package refactor (tests/data/bundle_before_refactor: the tiny
SYNTHETIC study's PanSegNet, exported and run by commit 34580c8) still verifies and segments, with
the same mask. Its bundle.json names the trainer by import path, which the refactor kept."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "bundle_before_refactor"
BUNDLE = DATA / "panseg_T1_pansegnet.tar"


def test_old_bundle_names_a_trainer_that_imports():
    from workflow_scripts.trainers import load_trainer_class

    with tarfile.open(BUNDLE) as tf:
        info = json.loads(tf.extractfile("panseg_T1_pansegnet/bundle.json").read())
    assert info["trainer"] == "workflow_scripts.trainers.pansegnet:PanSegNetTrainer"
    assert load_trainer_class(info["trainer"]).__name__ == "PanSegNetTrainer"


@pytest.mark.workflow  # a prediction end to end (about 20 s)
def test_old_bundle_segments_as_before(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scan.nii.gz").write_bytes((DATA / "scan.nii.gz").read_bytes())
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.segment", "--bundle", str(BUNDLE),
                           "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "masks" / "scan.nii.gz")))
    want = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "expected_mask.nii.gz")))
    assert got.shape == want.shape and want.sum() > 0
    assert np.array_equal(got, want), f"{int((got != want).sum())} voxels differ"
