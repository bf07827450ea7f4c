"""Recognise a dataset's layout and bring it into the PanSegData raw layout that prepare reads.

Layouts (``imagesTr`` and ``labelsTr`` side by side, at any depth):

    panseg     imagesTr/<CENTER>_<NNNN>_0000.nii.gz + labelsTr/<CENTER>_<NNNN>.nii.gz (PanSegData):
               used as it is (mirrored), name-mapping files included
    nnunet     imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz with any case names
    decathlon  imagesTr/<case>.nii.gz + labelsTr/<case>.nii.gz (Medical Segmentation Decathlon;
               also the layout the NIH DICOM conversion writes, see workflow_scripts.data.sources.nih)

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

from workflow_scripts.common.atomic import atomic_dir, atomic_path, write_text
from workflow_scripts.data.decode import read_nifti
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.inventory import find_dataset_dirs, is_litter, write_import_problems, write_origins
from workflow_scripts.common.safe_archive import archive_stem, is_archive_name, safe_extract

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "panseg", "nnunet", "decathlon")
NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(?P<gz>\.gz)?$")
CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
PANSEG_CASE = re.compile(r"^[A-Z][A-Z0-9]*_\d+$")
TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass
class Case:
    original: str  # case name in the source (without channel suffix and extension)
    image: Path
    label: Path


@dataclass
class Misfit:
    original: str  # the file's case name, or its name without extension
    path: Path
    problem: str


@dataclass
class Folder:
    """The files of imagesTr or labelsTr: NIfTI files by stem, and every other file as a misfit."""

    nifti: dict[str, Path]
    misfits: list[Misfit]


def scan_folder(folder: Path) -> Folder:
    """Every file below `folder` (documented litter aside): NIfTI files directly in it by stem; the
    rest (other files, files in sub-folders, two files of one stem) are misfits."""
    nifti, misfits = {}, []
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).parts
        if is_litter(rel) or path.is_dir():
            continue
        m = NIFTI.match(path.name)
        stem = m["stem"] if m else path.name
        if len(rel) > 1:
            misfits.append(Misfit(stem, path, f"in a sub-folder of {Path(folder).name}; files must lie directly in it"))
        elif not m:
            misfits.append(Misfit(stem, path, "not a NIfTI file (.nii or .nii.gz)"))
        elif stem in nifti:
            misfits.append(Misfit(stem, path, f"a second file for {stem} (beside {nifti[stem].name})"))
        else:
            nifti[stem] = path
    return Folder(nifti, misfits)


def nifti_files(folder: Path) -> dict[str, Path]:
    """NIfTI files of a folder by stem (name without .nii/.nii.gz); litter skipped."""
    return scan_folder(folder).nifti


def layout_counts(images: dict, labels: dict) -> dict[str, list[str]]:
    """Image/label pairs that follow each layout (panseg and nnunet are kept apart: a panseg name
    also fits nnU-Net's pattern, and counts for panseg only)."""
    channel0 = {m["case"]: s for s in images if (m := CHANNEL.match(s)) and m["channel"] == "0000"}
    nn = sorted(c for c in channel0 if c in labels)
    return {"panseg": [c for c in nn if PANSEG_CASE.match(c)], "nnunet": [c for c in nn if not PANSEG_CASE.match(c)],
            "decathlon": sorted(set(images) & set(labels))}


EXAMPLE = {"panseg": "{c}_0000.nii.gz + {c}.nii.gz", "nnunet": "{c}_0000.nii.gz + {c}.nii.gz",
           "decathlon": "{c}.nii.gz in both folders"}


def detect_layout(images_dir: Path, labels_dir: Path) -> str:
    """The layout most image/label pairs follow; files that follow none are reported by the import
    (or by prepare) one by one. A tie is an error naming examples of both."""
    images, labels = nifti_files(images_dir), nifti_files(labels_dir)
    if not images:
        raise InputError(images_dir, "holds no NIfTI images (.nii/.nii.gz)")
    counts = layout_counts(images, labels)
    best = max(len(v) for v in counts.values())
    if best == 0:
        raise InputError(images_dir, f"no image in it has a label in {labels_dir} under any known layout: images "
                                     f"such as {sorted(images)[:3]}, labels such as {sorted(labels)[:3]} (expected "
                                     "<case>_0000.nii.gz + <case>.nii.gz, or the same name in both folders)")
    winners = [k for k, v in counts.items() if len(v) == best]
    if len(winners) > 1:
        examples = "; ".join(f"{k}: " + EXAMPLE[k].format(c=counts[k][0]) for k in winners)
        raise InputError(images_dir, f"layout is ambiguous: {best} pairs each follow {' and '.join(winners)} "
                                     f"({examples}); set the source's `layout`")
    return winners[0]


def list_cases(images_dir: Path, labels_dir: Path, layout: str) -> tuple[list[Case], list[Misfit]]:
    """The cases of an nnunet or decathlon layout, and every file that is not part of one, with its problem."""
    images, labels = scan_folder(images_dir), scan_folder(labels_dir)
    misfits = images.misfits + labels.misfits
    cases: dict[str, Case] = {}
    second_channel: dict[str, Path] = {}
    if layout in ("nnunet", "panseg"):
        for stem, path in images.nifti.items():
            m = CHANNEL.match(stem)
            if not m:
                misfits.append(Misfit(stem, path, "not an nnU-Net raw image name (<case>_0000.nii.gz)"))
            elif m["channel"] != "0000":
                second_channel[m["case"]] = path
                misfits.append(Misfit(m["case"], path, f"image channel {m['channel']}: only single-channel datasets "
                                                       "are supported"))
            elif m["case"] not in labels.nifti:
                misfits.append(Misfit(m["case"], path, f"image has no label {m['case']}.nii.gz in {labels_dir}"))
            else:
                cases[m["case"]] = Case(m["case"], path, labels.nifti[m["case"]])
    elif layout == "decathlon":
        for stem, path in images.nifti.items():
            if stem in labels.nifti:
                cases[stem] = Case(stem, path, labels.nifti[stem])
            else:
                misfits.append(Misfit(stem, path, f"image has no label of the same name in {labels_dir}"))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    for case, path in second_channel.items():  # a multi-channel case is left out as a whole
        if case in cases:
            c = cases.pop(case)
            misfits += [Misfit(case, c.image, f"its case has a second image channel ({path.name})"),
                        Misfit(case, c.label, f"its case has a second image channel ({path.name})")]
    paired = {c.label for c in cases.values()} | {m.path for m in misfits}
    for stem, path in labels.nifti.items():
        if path not in paired:
            misfits.append(Misfit(stem, path, f"label has no image in {images_dir}"))
    return [cases[k] for k in sorted(cases)], sorted(misfits, key=lambda m: (m.original, str(m.path)))


def _dropped(name: str, drop_cases) -> bool:
    m = TRAILING_NUMBER.search(name)
    return any((isinstance(d, str) and d == name) or (isinstance(d, int) and m and int(m[1]) == d)
               for d in drop_cases or [])


def drop(cases: list[Case], drop_cases) -> tuple[list[Case], list[str]]:
    """Leave out cases named in `drop_cases`: a string is a case name, an integer the number at
    the end of the name (NIH Pancreas-CT: 25 and 70 duplicate other cases)."""
    kept = [c for c in cases if not _dropped(c.original, drop_cases)]
    dropped = [c.original for c in cases if _dropped(c.original, drop_cases)]
    missing = [d for d in drop_cases or [] if not any(_dropped(o, [d]) for o in dropped)]
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
    """Write `src` with every value in `foreground` as 1 and 0 elsewhere, from its fully decoded voxels."""
    import SimpleITK as sitk

    label = read_nifti(src)
    values = set(np.unique(label.array).tolist())
    unexpected = values - {0} - set(foreground)
    if unexpected:
        raise InputError(src, f"label values {sorted(unexpected)} are neither background (0) nor in "
                              f"foreground_labels {list(foreground)}")
    merged = label.to_sitk(np.isin(label.zyx, list(foreground)).astype(np.uint8))
    with atomic_path(dest) as tmp:
        sitk.WriteImage(merged, str(tmp), useCompression=True)


def _user_file(path: Path) -> str:
    return os.path.realpath(path)


def mirror(src_root: Path, out: Path, mode: str, origins: dict, origin_of=_user_file) -> dict:
    """PanSegData layout: reproduce the tree under `out` (files placed by `mode`); archives are
    extracted into a folder named after them (t1.zip -> t1/). Hidden folders and the documented
    litter are left out; every file placed is recorded in `origins`."""
    files = archives = 0
    for path in sorted(src_root.rglob("*")):
        rel = path.relative_to(src_root)
        if path.is_dir() or is_litter(rel.parts) or any(p.startswith(".") for p in rel.parts[:-1]):
            continue
        if is_archive_name(path.name):
            dest = rel.parent / archive_stem(path.name)
            counts = safe_extract(path, out / dest)
            for member in counts["files"]:
                origins[(dest / member).as_posix()] = f"{origin_of(path)} member {member}"
            archives += 1
        else:
            place(path, out / rel, mode)
            origins[rel.as_posix()] = origin_of(path)
            files += 1
    return {"files": files, "archives_extracted": archives}


def import_dataset(src_root, out, *, layout="auto", center=None, foreground_labels=None, drop_cases=None,
                   mode="link", source_name="", origin_of=_user_file) -> dict:
    """Bring the dataset under `src_root` into `out` (a new folder) in the PanSegData raw layout.

    Builds into a temporary sibling folder and renames it to `out` at the end: a failure leaves
    nothing at `out`. A case that cannot be imported (an orphan, a second channel, a misnamed
    file, a label that cannot be merged) does not stop the import: it is listed in
    ``out/import_problems.tsv`` (its file named by `origin_of`: the user's own file or an archive
    member), and prepare applies ``prepare.on_bad_case`` to it like to any bad case. Every file
    placed is recorded in ``out/origins.tsv``. Returns a summary, also written to ``out/import.json``.
    """
    src_root, out = Path(src_root), Path(out)
    if not src_root.is_dir():
        raise InputError(src_root, "source folder does not exist")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    origins: dict[str, str] = {}
    with atomic_dir(out) as tmp:
        if layout == "auto":
            try:
                images_dir, labels_dir = find_dataset_dirs(src_root)
            except InputError as exc:
                if "several imagesTr/labelsTr pairs" in exc.problem or any(
                        is_archive_name(p.name) for p in src_root.rglob("*")):
                    images_dir = None  # e.g. PanSegData with t1/ and t2/ (or its zips) side by side
                else:
                    raise
            layout = "panseg" if images_dir is None else detect_layout(images_dir, labels_dir)
            log.info("%s: layout %s detected", src_root, layout)
        summary = {"source": source_name, "from": str(src_root), "layout": layout}
        if layout == "panseg":
            summary.update(mirror(src_root, tmp, mode, origins, origin_of))
            if foreground_labels or drop_cases:
                log.warning("foreground_labels/drop_cases apply to nnunet and decathlon layouts only; ignored")
        else:
            images_dir, labels_dir = find_dataset_dirs(src_root)
            if not center:
                counts = layout_counts(nifti_files(images_dir), nifti_files(labels_dir))[layout]
                example = EXAMPLE[layout].format(c=counts[0]) if counts else ""
                raise InputError(src_root, f"{len(counts)} cases follow the {layout} layout (e.g. {example}), whose "
                                           "cases are renamed <CENTER>_<NNNN>: set the source's `center` (e.g. MSD, "
                                           "NIH), or `layout: panseg` if the names are <CENTER>_<NNNN> already")
            cases, misfits = list_cases(images_dir, labels_dir, layout)
            cases, dropped = drop(cases, drop_cases)
            misfits = [m for m in misfits if not _dropped(m.original, drop_cases)]
            ids = new_ids(cases, center)
            problems = [dict(file=origin_of(m.path), case_id=m.original, center=center, problem=m.problem)
                        for m in misfits]
            labels_merged = 0
            for i, c in enumerate(cases, 1):
                new = ids[c.original]
                ext = ".nii.gz" if c.image.name.endswith(".gz") else ".nii"
                lext = ".nii.gz" if c.label.name.endswith(".gz") or foreground_labels else ".nii"
                label_dest = tmp / "labelsTr" / f"{new}{lext}"
                if foreground_labels:
                    try:
                        merge_label(c.label, label_dest, foreground_labels)
                    except InputError as exc:
                        problems.append(dict(file=origin_of(c.label), case_id=new, center=center,
                                             problem=f"label cannot be merged: {exc.problem}"))
                        continue
                    labels_merged += 1
                    origins[f"labelsTr/{new}{lext}"] = f"{origin_of(c.label)} (labels {list(foreground_labels)} merged)"
                    place(c.image, tmp / "imagesTr" / f"{new}_0000{ext}", mode)
                else:
                    origins[f"labelsTr/{new}{lext}"] = origin_of(c.label)
                    place(c.image, tmp / "imagesTr" / f"{new}_0000{ext}", mode)
                    place(c.label, label_dest, mode)
                origins[f"imagesTr/{new}_0000{ext}"] = origin_of(c.image)
                if i % 25 == 0:
                    log.info("%s: %d/%d cases imported", src_root.name, i, len(cases))
            for p in problems:
                log.warning("NOT IMPORTED %s (%s): %s", p["case_id"], p["file"], p["problem"])
            write_text(tmp / "name_mapping.json", json.dumps(ids, indent=1, sort_keys=True) + "\n")
            write_import_problems(tmp, problems)
            summary.update(center=center, cases=len(cases) - sum(p["case_id"] in ids.values() for p in problems),
                           dropped=dropped, not_imported=len(problems), labels_merged=labels_merged,
                           foreground_labels=list(foreground_labels or []))
            log.info("%s: %d cases imported as %s_NNNN (%s), %d dropped %s, %d labels merged to 1, %d files not "
                     "imported (listed in import_problems.tsv; prepare reports them)", src_root, summary["cases"],
                     center, mode, len(dropped), dropped, labels_merged, len(problems))
        write_origins(tmp, origins)
        write_text(tmp / "import.json", json.dumps(summary, indent=1) + "\n")
    return summary
