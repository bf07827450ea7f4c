"""Recognise a dataset's layout and bring it into the PanSegData raw layout that prepare reads.

Layouts (``imagesTr`` and ``labelsTr`` side by side, at any depth):

    panseg     imagesTr/<CENTER>_<NNNN>_0000.nii.gz + labelsTr/<CENTER>_<NNNN>.nii.gz (PanSegData):
               used as it is (mirrored), name-mapping files included
    nnunet     imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz with any case names
    decathlon  imagesTr/<case>.nii.gz + labelsTr/<case>.nii.gz (Medical Segmentation Decathlon;
               also the layout the NIH DICOM conversion writes, see workflow_scripts.sources.nih)

``nnunet`` and ``decathlon`` cases are renamed ``<CENTER>_<NNNN>`` with the center chosen in
config; NNNN is the number at the end of the original name when those numbers are unique (so
``pancreas_004`` becomes ``MSD_0004`` and stays traceable), else a running number in name order.
``name_mapping.json`` (original name -> new case id) keeps the provenance, and ``import.json``
says what was done. Labels are merged when ``foreground_labels`` is given (Decathlon: 1 pancreas
and 2 tumour -> 1); a label value outside {0} and that list is an error naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, atomic_path, write_text
from ..errors import InputError
from ..prepare import find_dataset_dirs
from .archive import archive_stem, is_archive_name, safe_extract

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "panseg", "nnunet", "decathlon")
NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(?P<gz>\.gz)?$")
CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
PANSEG_CASE = re.compile(r"^[A-Z][A-Z0-9]*_\d+$")
TRAILING_NUMBER = re.compile(r"(\d+)$")


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_")) or name == "__MACOSX"


def nifti_files(folder: Path) -> dict[str, Path]:
    """NIfTI files of a folder by stem (name without .nii/.nii.gz); hidden and ._ files skipped."""
    out = {}
    for f in sorted(Path(folder).iterdir()):
        m = NIFTI.match(f.name)
        if m and not _is_hidden(f.name) and (f.is_file() or f.is_symlink()):
            out[m["stem"]] = f
    return out


@dataclass
class Case:
    original: str  # case name in the source (without channel suffix and extension)
    image: Path
    label: Path


def detect_layout(images_dir: Path, labels_dir: Path) -> str:
    images, labels = nifti_files(images_dir), nifti_files(labels_dir)
    if not images:
        raise InputError(images_dir, "holds no NIfTI images (.nii/.nii.gz)")
    channel = {s: CHANNEL.match(s) for s in images}
    if all(channel.values()) and {m["case"] for m in channel.values()} <= set(labels):
        cases = {m["case"] for m in channel.values()}
        return "panseg" if all(PANSEG_CASE.match(c) for c in cases) else "nnunet"
    if set(images) & set(labels):
        return "decathlon"
    raise InputError(images_dir, f"layout not recognised: image names such as {sorted(images)[:3]} match neither "
                                 "<case>_0000 (nnU-Net raw) nor the label names in labelsTr (Decathlon)")


def list_cases(images_dir: Path, labels_dir: Path, layout: str) -> list[Case]:
    images, labels = nifti_files(images_dir), nifti_files(labels_dir)
    cases = []
    if layout in ("nnunet", "panseg"):
        for stem, path in images.items():
            m = CHANNEL.match(stem)
            if not m:
                raise InputError(path, "not an nnU-Net raw image name (<case>_0000.nii.gz)")
            if m["channel"] != "0000":
                raise InputError(path, "a second image channel: only single-channel datasets are supported")
            if m["case"] not in labels:
                raise InputError(path, f"image has no label {m['case']}.nii.gz in {labels_dir}")
            cases.append(Case(m["case"], path, labels[m["case"]]))
    elif layout == "decathlon":
        for stem, path in images.items():
            if stem not in labels:
                raise InputError(path, f"image has no label of the same name in {labels_dir}")
            cases.append(Case(stem, path, labels[stem]))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    orphans = set(labels) - {c.original for c in cases}
    if orphans:
        raise InputError(labels_dir, f"labels without an image: {sorted(orphans)[:5]}")
    return cases


def drop(cases: list[Case], drop_cases) -> tuple[list[Case], list[str]]:
    """Leave out cases named in `drop_cases`: a string is a case name, an integer the number at
    the end of the name (NIH Pancreas-CT: 25 and 70 duplicate other cases)."""
    wanted = {str(d) for d in drop_cases or [] if isinstance(d, str)}
    numbers = {int(d) for d in drop_cases or [] if isinstance(d, int)}
    kept, dropped = [], []
    for c in cases:
        m = TRAILING_NUMBER.search(c.original)
        if c.original in wanted or (m and int(m[1]) in numbers):
            dropped.append(c.original)
        else:
            kept.append(c)
    missing = [d for d in drop_cases or [] if not any(
        (isinstance(d, str) and d == o) or (isinstance(d, int) and TRAILING_NUMBER.search(o)
                                            and int(TRAILING_NUMBER.search(o)[1]) == d) for o in dropped)]
    if missing:
        log.warning("drop_cases %s matched no case (removed already?)", missing)
    return kept, dropped


def new_ids(cases: list[Case], center: str) -> dict[str, str]:
    """original name -> <CENTER>_<NNNN>, keeping the original number where it is unique."""
    numbers = [TRAILING_NUMBER.search(c.original) for c in cases]
    if all(numbers) and len({int(m[1]) for m in numbers}) == len(cases):
        return {c.original: f"{center}_{int(m[1]):04d}" for c, m in zip(cases, numbers)}
    log.info("case names carry no unique numbers: numbering them 1..%d in name order", len(cases))
    return {c.original: f"{center}_{i:04d}" for i, c in enumerate(sorted(cases, key=lambda c: c.original), 1)}


def place(src: Path, dest: Path, mode: str) -> None:
    """Put `src` at `dest`: "move" (rename; staging files), "link" (absolute symlink; the
    user's own files stay where they are) or "copy"."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mode == "move":
        os.replace(src, dest)
    elif mode == "link":
        os.symlink(Path(src).resolve(), dest)
    elif mode == "copy":
        shutil.copy2(src, dest)
    else:
        raise ValueError(mode)


def merge_label(src: Path, dest: Path, foreground) -> None:
    """Write `src` with every value in `foreground` as 1 and 0 elsewhere."""
    import SimpleITK as sitk

    from ..pairs import read_image

    img = read_image(src)
    arr = sitk.GetArrayViewFromImage(img)
    values = set(np.unique(arr).tolist())
    unexpected = values - {0} - set(foreground)
    if unexpected:
        raise InputError(src, f"label values {sorted(unexpected)} are neither background (0) nor in "
                              f"foreground_labels {list(foreground)}")
    merged = sitk.GetImageFromArray(np.isin(arr, list(foreground)).astype(np.uint8))
    merged.CopyInformation(img)
    with atomic_path(dest) as tmp:
        sitk.WriteImage(merged, str(tmp), useCompression=True)


def mirror(src_root: Path, out: Path, mode: str) -> dict:
    """PanSegData layout: reproduce the tree under `out` (files placed by `mode`); archives are
    extracted into a folder named after them (t1.zip -> t1/)."""
    files = archives = 0
    for path in sorted(src_root.rglob("*")):
        rel = path.relative_to(src_root)
        if any(p.startswith(".") or p == "__MACOSX" for p in rel.parts) or path.is_dir():
            continue  # macOS litter and hidden files; folders come with their files
        if is_archive_name(path.name):
            safe_extract(path, out / rel.parent / archive_stem(path.name))
            archives += 1
        else:
            place(path, out / rel, mode)
            files += 1
    return {"files": files, "archives_extracted": archives}


def import_dataset(src_root, out, *, layout="auto", center=None, foreground_labels=None, drop_cases=None,
                   mode="link", source_name="") -> dict:
    """Bring the dataset under `src_root` into `out` (a new folder) in the PanSegData raw layout.

    Builds into a temporary sibling folder and renames it to `out` at the end: a failure leaves
    nothing at `out`. Returns a summary, also written to ``out/import.json``.
    """
    src_root, out = Path(src_root), Path(out)
    if not src_root.is_dir():
        raise InputError(src_root, "source folder does not exist")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    with atomic_dir(out) as tmp:
        if layout == "auto":
            try:
                images_dir, labels_dir = find_dataset_dirs(src_root)
                layout = detect_layout(images_dir, labels_dir)
            except InputError as exc:
                if "several imagesTr/labelsTr pairs" in exc.problem or any(
                        is_archive_name(p.name) for p in src_root.rglob("*")):
                    layout = "panseg"  # e.g. PanSegData with t1/ and t2/ (or its zips) side by side
                else:
                    raise
            log.info("%s: layout %s detected", src_root, layout)
        summary = {"source": source_name, "from": str(src_root), "layout": layout}
        if layout == "panseg":
            summary.update(mirror(src_root, tmp, mode))
            if foreground_labels or drop_cases:
                log.warning("foreground_labels/drop_cases apply to nnunet and decathlon layouts only; ignored")
        else:
            if not center:
                raise InputError(src_root, f"a {layout} layout needs the source's `center` (e.g. MSD, NIH) to "
                                           "name its cases <CENTER>_<NNNN>")
            images_dir, labels_dir = find_dataset_dirs(src_root)
            cases = list_cases(images_dir, labels_dir, layout)
            cases, dropped = drop(cases, drop_cases)
            ids = new_ids(cases, center)
            labels_merged = 0
            for i, c in enumerate(cases, 1):
                new = ids[c.original]
                ext = ".nii.gz" if c.image.name.endswith(".gz") else ".nii"
                place(c.image, tmp / "imagesTr" / f"{new}_0000{ext}", mode)
                if foreground_labels:
                    merge_label(c.label, tmp / "labelsTr" / f"{new}.nii.gz", foreground_labels)
                    labels_merged += 1
                else:
                    lext = ".nii.gz" if c.label.name.endswith(".gz") else ".nii"
                    place(c.label, tmp / "labelsTr" / f"{new}{lext}", mode)
                if i % 25 == 0:
                    log.info("%s: %d/%d cases imported", src_root.name, i, len(cases))
            write_text(tmp / "name_mapping.json", json.dumps(ids, indent=1, sort_keys=True) + "\n")
            summary.update(center=center, cases=len(cases), dropped=dropped,
                           labels_merged=labels_merged, foreground_labels=list(foreground_labels or []))
            log.info("%s: %d cases imported as %s_NNNN (%s), %d dropped %s, %d labels merged to 1",
                     src_root, len(cases), center, mode, len(dropped), dropped, labels_merged)
        write_text(tmp / "import.json", json.dumps(summary, indent=1) + "\n")
    return summary
