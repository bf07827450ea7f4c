"""Shared fixtures: tiny images written by the tests themselves (no patient data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_nifti(path, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """Write a numpy (z, y, x) array as NIfTI; spacing/origin in SimpleITK (x, y, z) order."""
    img = sitk.GetImageFromArray(np.asarray(array))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in direction))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return Path(path)


def blob(shape=(8, 12, 12), centre=(4, 6, 6), radius=3):
    zz, yy, xx = np.indices(shape)
    return (((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius**2).astype(np.uint8)


# Fixtures that run the workflow end to end: a test using one is a `workflow` test (minutes).
WORKFLOW_FIXTURES = {"tiny_study"}


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
    """Tiers: `workflow` (Snakemake end to end, nnU-Net training) and `slurm` are marked in their
    modules or found here by the fixtures they use; everything else is `unit` (make test-unit)."""
    for item in items:
        if WORKFLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.workflow)
        if not any(item.get_closest_marker(name) for name in ("workflow", "slurm")):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def restore_locale():
    """SimpleITK's DICOM code (GDCM) can switch the process's C locale to "C", after which Python
    text I/O without an explicit encoding falls back to ASCII: restore it after every test."""
    import locale

    yield
    locale.setlocale(locale.LC_ALL, "")


@pytest.fixture
def raw_dataset(tmp_path):
    """A PanSegData-style folder: t1/imagesTr + t1/labelsTr with centers AAA and BBB, 3 cases each."""
    root = tmp_path / "raw"
    mapping = {}
    rng = np.random.default_rng(0)
    for center in ("AAA", "BBB"):
        for k in range(1, 4):
            case = f"{center}_{k:04d}"
            img = rng.normal(100, 10, size=(8, 12, 12)).astype(np.float32)
            write_nifti(root / "t1" / "imagesTr" / f"{case}_0000.nii.gz", img, spacing=(1.5, 1.5, 3.0))
            write_nifti(root / "t1" / "labelsTr" / f"{case}.nii.gz", blob(), spacing=(1.5, 1.5, 3.0))
            # Cases 1 and 2 of a center are one participant (two visits).
            mapping[f"{center}-P{min(k, 2)}-V{k}-T1"] = case
    mapping["dropped-scan"] = "Not included"
    import json

    (root / "T1-name_mapping.json").write_text(json.dumps(mapping))
    return root


TINY = REPO / "tests" / "data" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The tiny SYNTHETIC study (tests/data/tiny.yaml: 4 models x 3 folds, leave-one-center-out, a few
    iterations each) run through the whole workflow once, shared by test_workflow.py, test_bundle.py
    and test_segment.py (about 4-5 minutes on 2 cores). Tests that change it restore what they change
    or work on copies."""
    from helpers import snakemake

    work = tmp_path_factory.mktemp("tiny-study")
    snakemake("--cores", "2", "--configfile", str(TINY), workdir=work, timeout=1500)
    return work
