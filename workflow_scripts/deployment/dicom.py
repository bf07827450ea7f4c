"""DICOM series: find them in a folder (split by SeriesInstanceUID) and read one as a 3-D image.

A folder may hold several series (a localizer, several phases, a re-scan): GDCM groups its files
by SeriesInstanceUID and each series becomes one scan; files of two series are never mixed into
one volume. Files are ordered by slice position along the slice normal (GDCM). A series is read
and verified by ``decode.read_dicom_series``: duplicate or missing slices, or a DICOM file beside
it that cannot be read (GDCM leaves a truncated slice out of its series), would give a volume of
the wrong size and a wrong pancreas volume, so they are an error naming the folder and the series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from workflow_scripts.data.decode import DICOM_SUFFIXES, looks_like_dicom, read_dicom_series, unreadable_dicom_files  # noqa: F401
from workflow_scripts.common.errors import InputError  # noqa: F401 (callers catch dicom.InputError)


@dataclass
class Series:
    folder: Path
    uid: str  # SeriesInstanceUID
    files: list[str] = field(default_factory=list)  # ordered by slice position
    number: str = ""  # SeriesNumber (0020,0011), if present
    description: str = ""  # SeriesDescription (0008,103e), if present


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
            head = sitk.ImageFileReader()
            head.SetFileName(files[0])
            head.ReadImageInformation()
            number, description = _tag(head, "0020|0011"), _tag(head, "0008|103e")
        except RuntimeError:
            number, description = "", ""
        series.append(Series(folder, uid, files, number, description))
    series.sort(key=lambda s: (int(s.number) if s.number.isdigit() else 10**9, s.uid))
    stray = unreadable_dicom_files(folder, [f for s in series for f in s.files])
    return series, stray


def read_series(series: Series, unreadable=()) -> sitk.Image:
    """One series as a verified 3-D image (CT in HU: GDCM applies rescale slope/intercept); see
    ``decode.read_dicom_series`` (uneven slices, or unreadable DICOM files beside it, are errors)."""
    return read_dicom_series(series.folder, series.uid, series.files, unreadable)
