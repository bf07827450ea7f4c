"""NIH Pancreas-CT (TCIA): DICOM series + NIfTI labels -> a Decathlon-layout folder for the local source.

    python -m workflow_scripts.sources.nih --dicom Pancreas-CT --labels TCIA_pancreas_labels-02-05-2017 \\
        --out data/local/nih_pancreas_ct

TCIA delivers one DICOM series per patient below ``<dicom>/PANCREAS_<NNNN>/`` (at any depth, as the
NBIA Data Retriever writes it) and the labels as ``<labels>/label<NNNN>.nii.gz``. Each series is
read with SimpleITK (GDCM sorts the slices by position) and written as
``<out>/imagesTr/PANCREAS_<NNNN>.nii.gz``; its label is copied to ``<out>/labelsTr/`` under the
same name. Cases 25 and 70 (duplicates) are converted too and left out by the local source's
``drop_cases: [25, 70]``, so the converted folder stays a faithful copy of the release.

A label whose voxel grid size differs from its image is an error naming both files. A label whose
header (origin/direction) differs from its image's while the sizes agree is written unchanged and
listed in ``<out>/conversion.json`` and the log: prepare then uses the image's geometry
(``prepare.label_header_mismatch: use_image``), which is right only if the voxel arrays are
aligned. Look at a few of those cases overlaid on their image before training.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.common.atomic import atomic_path, write_text
from workflow_scripts.data.decode import read_dicom_series, read_nifti, unreadable_dicom_files
from workflow_scripts.common.errors import InputError

log = logging.getLogger(__name__)

PATIENT = re.compile(r"^PANCREAS_(\d{4})$", re.IGNORECASE)


def read_series(folder: Path) -> sitk.Image:
    """The one DICOM series found at any depth below `folder`, fully read and verified."""
    series = []
    for d in sorted({p.parent for p in folder.rglob("*") if p.is_file()}):
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ():
            series.append((d, sid))
    if not series:
        raise InputError(folder, "no DICOM series found at any depth")
    if len(series) > 1:
        raise InputError(folder, f"{len(series)} DICOM series found, expected one: {[str(d) for d, _ in series]}")
    d, sid = series[0]
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), sid))
    return read_dicom_series(d, sid, files, unreadable_dicom_files(d, files))


def convert(dicom_root, labels_root, out) -> dict:
    dicom_root, labels_root, out = Path(dicom_root), Path(labels_root), Path(out)
    patients = sorted(p for p in dicom_root.iterdir() if p.is_dir() and PATIENT.match(p.name))
    if not patients:
        raise InputError(dicom_root, "no PANCREAS_<NNNN> patient folders found")
    header_differs, done = [], 0
    for i, patient in enumerate(patients, 1):
        num = PATIENT.match(patient.name)[1]
        name = f"PANCREAS_{num}.nii.gz"
        label_path = labels_root / f"label{num}.nii.gz"
        if not label_path.exists():
            raise InputError(label_path, f"label of {patient.name} does not exist")
        image = read_series(patient)
        label = read_nifti(label_path)  # verified before it is copied
        if image.GetSize() != label.size:
            raise InputError(label_path, f"grid {label.size} differs from its DICOM series {image.GetSize()} "
                                         f"({patient})")
        if not (np.allclose(image.GetDirection(), label.direction, atol=1e-4)
                and np.allclose(image.GetOrigin(), label.origin, atol=1e-2)):
            header_differs.append(name)
        with atomic_path(out / "imagesTr" / name) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        with atomic_path(out / "labelsTr" / name) as tmp:
            shutil.copyfile(label_path, tmp)
        done += 1
        if i % 10 == 0:
            log.info("converted %d/%d patients", i, len(patients))
    summary = {"converted": done, "label_header_differs_from_image": header_differs}
    write_text(out / "conversion.json", json.dumps(summary, indent=1) + "\n")
    log.info("%d patients converted into %s; %d labels have a header that differs from their image's "
             "(check a few overlays): %s", done, out, len(header_differs), header_differs[:10])
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert NIH Pancreas-CT (DICOM + NIfTI labels) to a Decathlon layout.")
    ap.add_argument("--dicom", required=True, help="folder holding PANCREAS_<NNNN>/ DICOM folders")
    ap.add_argument("--labels", required=True, help="folder holding label<NNNN>.nii.gz")
    ap.add_argument("--out", required=True, help="new folder (imagesTr/, labelsTr/)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        convert(args.dicom, args.labels, args.out)
    except InputError as exc:
        log.error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
