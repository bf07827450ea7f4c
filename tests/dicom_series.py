"""Write a 3-D SimpleITK image as a DICOM series (one file per slice), as a scanner export would."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def write_series(image: sitk.Image, folder, series_uid: str, series_number: int = 1, prefix: str = "IM",
                 slices=None) -> list[Path]:
    """Slices `slices` (default all) of `image` as <folder>/<prefix><k>.dcm; returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d = image.GetDirection()
    tags = {
        "0008|0060": "MR",
        "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "0010|0010": "SYNTHETIC^TEST",
        "0010|0020": "SYNTHETIC",
        "0020|000d": STUDY_UID,
        "0020|000e": series_uid,
        "0020|0011": str(series_number),
        "0008|103e": f"synthetic series {series_number}",
        "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in slices if slices is not None else range(image.GetDepth()):
        sl = image[:, :, k]
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")  # SOPInstanceUID
        path = folder / f"{prefix}{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(sl)
        files.append(path)
    return files
