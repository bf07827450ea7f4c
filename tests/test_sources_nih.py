"""NIH Pancreas-CT conversion: tiny DICOM series written by the test -> Decathlon layout -> local source."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import blob, write_nifti
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.sources import local, nih

SHAPE = (5, 8, 8)


def write_dicom_series(folder, arr, uid, spacing=(0.8, 0.8, 2.5)):
    """One CT series, one file per slice, with the tags GDCM needs to sort and stack it."""
    img = sitk.GetImageFromArray(arr.astype(np.int16))
    img.SetSpacing(spacing)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in [("0008|0060", "CT"), ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
                           ("0020|000d", f"{uid}.1"), ("0020|000e", f"{uid}.2"), ("0008|0018", f"{uid}.3.{k + 1}"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))))]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"1-{k + 1:03d}.dcm"))
        writer.Execute(sl)


@pytest.fixture
def tcia(tmp_path):
    rng = np.random.default_rng(0)
    for n in (1, 2, 25):
        series = tmp_path / "Pancreas-CT" / f"PANCREAS_{n:04d}" / "11-24-2015-PANCREAS-18957" / "Pancreas-99667"
        write_dicom_series(series, rng.integers(-100, 200, SHAPE), uid=f"1.2.826.0.1.3680043.2.1125.{n}")
        write_nifti(tmp_path / "labels" / f"label{n:04d}.nii.gz", blob(SHAPE, (2, 4, 4), 2), spacing=(0.8, 0.8, 2.5))
    return tmp_path


def test_dicom_to_decathlon_layout_then_local_source(tcia, tmp_path):
    summary = nih.convert(tcia / "Pancreas-CT", tcia / "labels", tmp_path / "nih_nifti")
    assert summary["converted"] == 3
    image = sitk.ReadImage(str(tmp_path / "nih_nifti" / "imagesTr" / "PANCREAS_0002.nii.gz"))
    assert image.GetSize() == (8, 8, 5) and np.allclose(image.GetSpacing(), (0.8, 0.8, 2.5))
    assert json.loads((tmp_path / "nih_nifti" / "conversion.json").read_text(encoding="utf-8"))["converted"] == 3
    out = local.fetch({"path": str(tmp_path / "nih_nifti"), "layout": "decathlon", "center": "NIH",
                       "drop_cases": [25, 70]}, tmp_path / "raw" / "nih")
    assert out["cases"] == 2 and out["dropped"] == ["PANCREAS_0025"]


def test_label_of_another_size_names_both(tcia, tmp_path):
    write_nifti(tcia / "labels" / "label0002.nii.gz", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(InputError, match=r"label0002.nii.gz: grid .* differs from its DICOM series"):
        nih.convert(tcia / "Pancreas-CT", tcia / "labels", tmp_path / "out")
