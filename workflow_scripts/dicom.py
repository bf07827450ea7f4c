"""DICOM series: find them in a folder (split by SeriesInstanceUID) and read one as a 3-D image.

A folder may hold several series (a localizer, several phases, a re-scan): GDCM groups its files
by SeriesInstanceUID and each series becomes one scan; files of two series are never mixed into
one volume. Files are ordered by slice position along the slice normal (GDCM). A series is read
with SimpleITK's ``ImageSeriesReader`` only when its slices are evenly spaced: duplicate or missing
slices would give a volume of the wrong size and a wrong pancreas volume, so they are an error
naming the folder and the series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


@dataclass
class Series:
    folder: Path
    uid: str  # SeriesInstanceUID
    files: list[str] = field(default_factory=list)  # ordered by slice position
    number: str = ""  # SeriesNumber (0020,0011), if present
    description: str = ""  # SeriesDescription (0008,103e), if present


def looks_like_dicom(path: Path) -> bool:
    """A DICOM suffix, or the 'DICM' preamble marker at byte 128 (files without a suffix)."""
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def find_series(folder) -> tuple[list[Series], list[Path]]:
    """The DICOM series whose files lie directly in `folder` (not in sub-folders), ordered by
    SeriesNumber then UID, and the DICOM-looking files that belong to no readable series."""
    folder = Path(folder)
    series = []
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns on every folder without DICOM files
    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    for uid in uids:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if not files:
            continue
        try:
            head = _header(files[0])
            number, description = _tag(head, "0020|0011"), _tag(head, "0008|103e")
        except RuntimeError:
            number, description = "", ""
        series.append(Series(folder, uid, files, number, description))
    series.sort(key=lambda s: (int(s.number) if s.number.isdigit() else 10**9, s.uid))
    in_series = {Path(f).name for s in series for f in s.files}
    stray = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name not in in_series and looks_like_dicom(p))
    return series, stray


def _check_slice_positions(series: Series) -> None:
    """Refuse duplicate or missing slices (uneven spacing along the slice normal)."""
    positions, normal = [], None
    for f in series.files:
        head = _header(f)
        ipp, iop = _tag(head, "0020|0032"), _tag(head, "0020|0037")
        if not ipp or not iop:
            raise InputError(series.folder, f"series {series.uid}: {Path(f).name} has no ImagePositionPatient/"
                                            "ImageOrientationPatient, so its slices cannot be placed")
        if normal is None:
            o = np.array([float(v) for v in iop.split("\\")])
            normal = np.cross(o[:3], o[3:])
        positions.append(float(np.dot([float(v) for v in ipp.split("\\")], normal)))
    steps = np.abs(np.diff(positions))
    if np.any(steps < 1e-3):
        raise InputError(series.folder, f"series {series.uid}: two slices at the same position (duplicate slices?)")
    if steps.max() - steps.min() > 0.01 * np.median(steps) + 1e-3:
        raise InputError(series.folder, f"series {series.uid}: slice spacing varies from {steps.min():.3g} to "
                                        f"{steps.max():.3g} mm (missing slices?); a volume needs even spacing")


def read_series(series: Series) -> sitk.Image:
    """One series as a 3-D image (CT in HU: GDCM applies rescale slope/intercept)."""
    try:
        if len(series.files) == 1:  # an enhanced (multi-frame) file holds the whole volume
            image = sitk.ReadImage(series.files[0])
        else:
            _check_slice_positions(series)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(series.files)
            image = reader.Execute()
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise InputError(series.folder, f"series {series.uid} cannot be read ({lines[-1] if lines else exc})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(series.folder, f"series {series.uid} is not a grayscale scan "
                                        f"({image.GetNumberOfComponentsPerPixel()} components per pixel)")
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise InputError(series.folder, f"series {series.uid} has {len(series.files)} slice(s) of size "
                                        f"{image.GetSize()}; a 3-D scan needs at least 2 slices")
    return image
