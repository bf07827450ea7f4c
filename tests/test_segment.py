"""Segmenting new scans with a bundle: NIfTI and DICOM in; masks equal to the workflow's own ensemble
predictions; unreadable scans reported while the rest completes; DICOM series split by UID."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from dicom_series import write_series
from helpers import REPO, job_counts, snakemake
from workflow_scripts.deployment import dicom
from workflow_scripts.deployment import segment

MODELS = ["nnunet", "pansegnet"]


def raw_image(study: Path, case: str) -> Path:
    return study / "data" / "raw" / "synthetic" / "t1" / "imagesTr" / f"{case}_0000.nii.gz"


def bundle_file(study: Path, model: str) -> Path:
    return study / "results" / "T1" / model / "bundle" / f"panseg_T1_{model}.tar"


def workflow_mask(study: Path, model: str, case: str) -> sitk.Image:
    """The workflow's own fold-ensemble prediction of an external-center case."""
    return sitk.ReadImage(str(study / "results" / "T1" / model / "centers" / "NYU" / "ensemble_masks" / f"{case}.nii.gz"))


# scan name in the summary -> (NYU case it was made from, whether it went through DICOM)
EXPECTED = {
    "NYU_0001": ("NYU_0001", False),  # NYU_0001_0000.nii.gz: the channel suffix is dropped
    "sub_NYU_0004": ("NYU_0004", False),  # sub/NYU_0004.nii (uncompressed, in a sub-folder)
    "dicom_one": ("NYU_0002", True),  # one series in its folder
    "dicom_two_S3": ("NYU_0003", True),  # two series in one folder
    "dicom_two_S7": ("NYU_0001", True),
}
BROKEN = {"broken": "cannot be read as NIfTI", "truncated": "truncated"}


@pytest.fixture(scope="module")
def scan_folder(tiny_study, tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    shutil.copy(raw_image(tiny_study, "NYU_0001"), root / "NYU_0001_0000.nii.gz")
    (root / "sub").mkdir()
    sitk.WriteImage(sitk.ReadImage(str(raw_image(tiny_study, "NYU_0004"))), str(root / "sub" / "NYU_0004.nii"))
    write_series(sitk.ReadImage(str(raw_image(tiny_study, "NYU_0002"))), root / "dicom_one", "1.2.826.0.1.3680043.8.498.10")
    three = sitk.ReadImage(str(raw_image(tiny_study, "NYU_0003")))
    one = sitk.ReadImage(str(raw_image(tiny_study, "NYU_0001")))
    write_series(three, root / "dicom_two", "1.2.826.0.1.3680043.8.498.21", series_number=3, prefix="IM")
    write_series(one, root / "dicom_two", "1.2.826.0.1.3680043.8.498.22", series_number=7, prefix="IM_")
    (root / "broken.nii.gz").write_bytes(b"this is not an image")
    good = raw_image(tiny_study, "NYU_0002").read_bytes()
    (root / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not a scan")
    return root


@pytest.fixture(scope="module", params=MODELS)
def segmented(request, tiny_study, scan_folder, tmp_path_factory):
    model = request.param
    out = tmp_path_factory.mktemp(f"seg-{model}")
    summary, info = segment.run(bundle_file(tiny_study, model), scan_folder, out, device="cpu", threads=2)
    return model, out, summary, info


def test_masks_equal_the_workflow_ensemble(tiny_study, segmented, scan_folder):
    """The same bundle, the same scans: exactly the masks the workflow's predict_external wrote."""
    model, out, summary, _ = segmented
    ok = summary[summary.status == "ok"].set_index("scan")
    assert sorted(ok.index) == sorted(EXPECTED)
    for scan, (case, via_dicom) in EXPECTED.items():
        mask = sitk.ReadImage(str(out / ok.loc[scan, "mask"]))
        ref = workflow_mask(tiny_study, model, case)
        if via_dicom:  # the series' own geometry: compare in one orientation, origin to DICOM's precision
            mask, ref = sitk.DICOMOrient(mask, "LPS"), sitk.DICOMOrient(ref, "LPS")
            assert np.allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            assert np.allclose(mask.GetSpacing(), ref.GetSpacing(), atol=1e-4)
        else:  # the NIfTI's own geometry, exactly
            assert mask.GetOrigin() == ref.GetOrigin() and mask.GetSpacing() == ref.GetSpacing()
        assert mask.GetDirection() == ref.GetDirection()
        assert np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(ref)), scan


def test_summary_volumes_and_overlays(segmented):
    model, out, summary, info = segmented
    on_disk = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert list(on_disk.columns) == segment.COLUMNS and len(on_disk) == len(EXPECTED) + len(BROKEN)
    for row in summary[summary.status == "ok"].itertuples():
        mask = sitk.ReadImage(str(out / row.mask))
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        assert row.voxels == voxels
        assert row.volume_ml == pytest.approx(voxels * np.prod(mask.GetSpacing()) / 1000, abs=1e-3)
        assert row.size == "x".join(map(str, mask.GetSize())) and row.seconds > 0
        png = (out / row.overlay).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    dicom_rows = summary[summary.kind == "dicom"]
    assert set(dicom_rows.series_uid) == {"1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.21",
                                          "1.2.826.0.1.3680043.8.498.22"}
    assert info["model"] == model and info["ok"] == len(EXPECTED) and info["failed"] == len(BROKEN)
    assert info["peak_rss_mb"] > 0 and info["ignored_files"][0].endswith("notes.txt")
    assert json.loads((out / "segment_info.json").read_text())["bundle_sha256"] == info["bundle_sha256"]
    assert not list(out.glob(".work-*"))  # the extracted bundle and converted series are gone


def test_unreadable_scans_are_reported_and_the_rest_completes(segmented, scan_folder):
    _, out, summary, _ = segmented
    bad = summary[summary.status == "error"].set_index("scan")
    assert sorted(bad.index) == sorted(BROKEN)
    assert str(scan_folder / "broken.nii.gz") in bad.error["broken"]
    assert "cannot be read as NIfTI" in bad.error["broken"]
    assert str(scan_folder / "truncated.nii.gz") in bad.error["truncated"]
    assert bad.volume_ml.isna().all() and not (out / "masks" / "broken.nii.gz").exists()


def test_dicom_folder_with_two_series_gives_two_scans(scan_folder):
    series, stray = dicom.find_series(scan_folder / "dicom_two")
    assert [(s.number, len(s.files)) for s in series] == [("3", 21), ("7", 22)] and stray == []
    for s in series:  # each series' files only, never a mix
        assert {Path(f).name.startswith("IM_") for f in s.files} == {s.number == "7"}
    sizes = [dicom.read_series(s).GetSize() for s in series]
    assert sizes == [(62, 49, 21), (65, 51, 22)]
    scans, _ = segment.find_scans(scan_folder)
    assert [s.name for s in scans if s.source == scan_folder / "dicom_two"] == ["dicom_two_S3", "dicom_two_S7"]


def test_dicom_series_with_a_missing_slice_is_refused(scan_folder, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(scan_folder / "dicom_one", folder)
    (folder / "IM0010.dcm").unlink()
    (series,), _ = dicom.find_series(folder)
    with pytest.raises(dicom.InputError, match=r"slice spacing varies from .* \(missing slices\?\)"):
        dicom.read_series(series)


def test_stray_dicom_files_are_reported(tmp_path):
    folder = tmp_path / "in" / "junk"
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(b"\0" * 300)
    scans, _ = segment.find_scans(tmp_path / "in")
    assert [(s.name, bool(s.problem)) for s in scans] == [("junk_unreadable_dicom", True)]


def test_command_exit_status_and_progress(tiny_study, scan_folder, tmp_path):
    """The command line: progress per scan on stderr, exit 1 when a scan failed (0 with --allow-failures)."""
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(scan_folder / "NYU_0001_0000.nii.gz", scans)
    shutil.copy(scan_folder / "broken.nii.gz", scans)
    cmd = [sys.executable, "-m", "workflow_scripts.deployment.segment", "--bundle", str(bundle_file(tiny_study, "nnunet")),
           "--input", str(scans), "--out", str(tmp_path / "out"), "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "[1/2] NYU_0001: ok, pancreas" in proc.stderr and "[2/2] broken: FAILED" in proc.stderr
    assert "1 scan(s) failed: broken" in proc.stderr
    assert len(pd.read_csv(tmp_path / "out" / "summary.csv")) == 2
    assert segment.main([*cmd[3:], "--allow-failures", "--out", str(tmp_path / "out2")]) == 0


def test_tampered_bundle_is_refused_by_the_command(tiny_study, scan_folder, tmp_path, caplog):
    import tarfile

    bad = tmp_path / "bad.tar"
    shutil.copy(bundle_file(tiny_study, "nnunet"), bad)
    with tarfile.open(bad, "a") as tf:  # a second plans.json appended: the ambiguous-name trick
        tf.add(scan_folder / "notes.txt", arcname="panseg_T1_nnunet/plans.json")
    code = segment.main(["--bundle", str(bad), "--input", str(scan_folder), "--out", str(tmp_path / "out")])
    assert code == 2 and f"{bad}: member 'panseg_T1_nnunet/plans.json' appears twice" in caplog.text
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_no_scans_and_no_gpu_are_clear_errors(tiny_study, tmp_path, caplog):
    import torch

    (tmp_path / "empty").mkdir()
    args = ["--bundle", str(bundle_file(tiny_study, "nnunet")), "--out", str(tmp_path / "out")]
    assert segment.main([*args, "--input", str(tmp_path / "empty")]) == 2
    assert "no NIfTI files (.nii, .nii.gz) or DICOM series found" in caplog.text
    if not torch.cuda.is_available():
        shutil.copy(raw_image(tiny_study, "NYU_0001"), tmp_path / "empty")
        assert segment.main([*args, "--input", str(tmp_path / "empty"), "--device", "cuda"]) == 2
        assert "torch sees no GPU" in caplog.text


def test_snakemake_segment_target(tiny_study, scan_folder, tmp_path):
    """`segment:` jobs in config run as one Snakemake job per folder; a built bundle is not rebuilt."""
    import yaml

    scans = tmp_path / "new scans"  # a space in the path
    scans.mkdir()
    shutil.copy(scan_folder / "NYU_0001_0000.nii.gz", scans)
    shutil.copytree(scan_folder / "dicom_one", scans / "dicom_one")
    cfg = {"segment": {"ward7": {"bundle": str(bundle_file(tiny_study, "pansegnet")), "input": str(scans),
                                 "device": "cpu"}}}
    extra = tmp_path / "segment.yaml"
    extra.write_text(yaml.safe_dump(cfg))
    configs = ["--configfile", str(REPO / "tests" / "data" / "tiny.yaml"), str(extra)]
    dry = snakemake("-n", "segment_all", *configs, workdir=tiny_study, timeout=120)  # targets before
    # --configfile, which takes every value after it
    assert job_counts(dry.stdout) == {"segment_folder": 1, "segment_all": 1}  # nothing else (re)built
    snakemake("--cores", "2", "segment_all", *configs, workdir=tiny_study, timeout=600)
    out = tiny_study / "results" / "segment" / "ward7"
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.scan) == ["NYU_0001", "dicom_one"] and (summary.status == "ok").all()
    assert (tiny_study / "results" / "logs" / "segment" / "ward7.log").exists()
    assert (tiny_study / "results" / "benchmarks" / "segment" / "ward7.tsv").exists()
    proc = snakemake("-n", "--configfile", str(REPO / "tests" / "data" / "tiny.yaml"), workdir=tiny_study,
                     timeout=120)
    assert "Nothing to be done" in proc.stdout + proc.stderr  # bundles are part of `all`, and up to date
