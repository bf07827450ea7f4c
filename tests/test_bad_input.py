"""Issue 16: bad input never passes silently, in every layout and in both prepare modes.

Each defect is made in a small source folder (PanSegData, nnU-Net raw or Decathlon layout), the
folder is imported as a local source (layout auto) and prepared per center: with on_bad_case
"error" the run stops with an InputError naming the damaged file (the user's own file, not only
the link under data/raw); with "exclude" the damaged case is listed in the excluded table and every
other case is in the table. The source folder itself is never modified.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from source_data import SHAPE, case_pair
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.inventory import dataset_inventory, find_dataset_dirs
from workflow_scripts.data.prepare import prepare_center
from workflow_scripts.data.sources import local

LAYOUTS = ("panseg", "nnunet", "decathlon")
CENTERS = {"panseg": ("AHN", "MCF"), "nnunet": ("ABC",), "decathlon": ("MSD",)}


def names(layout: str, k: int, center="AHN") -> tuple[str, str]:
    """(image, label) file names of case k in a layout."""
    if layout == "panseg":
        return f"{center}_{k:04d}_0000.nii.gz", f"{center}_{k:04d}.nii.gz"
    if layout == "nnunet":
        return f"case_{k:02d}_0000.nii.gz", f"case_{k:02d}.nii.gz"
    return f"pancreas_{k:03d}.nii.gz", f"pancreas_{k:03d}.nii.gz"


def make_source(root: Path, layout: str, n=3) -> Path:
    for ci, center in enumerate(CENTERS[layout]):
        for k in range(1, n + 1):
            img, lab = names(layout, k, center)
            case_pair(root / "imagesTr" / img, root / "labelsTr" / lab, seed=10 * ci + k)
    return root


def import_and_prepare(src: Path, work: Path, layout: str, mode: str, **settings):
    """Import `src` (layout auto) and prepare every center; returns {center: (table, excluded)} or
    raises the first InputError."""
    out = work / "raw"
    if out.exists():
        shutil.rmtree(out)
    center = {"panseg": None}.get(layout, CENTERS[layout][0])
    local.fetch({"path": str(src), **({"center": center} if center else {}), **settings}, out)
    results = {}
    for c in CENTERS[layout]:
        results[c] = prepare_center(out, "CT", c, "train-cv", work / "prep" / f"{c}.tsv", work / "fixed",
                                    on_bad_case=mode, data_source="test")
    return results


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---- defects: each returns (the damaged file in the user's folder, text the problem contains) -----
def truncate_label(src, layout):
    lab = src / "labelsTr" / names(layout, 2)[1]
    lab.write_bytes(lab.read_bytes()[:-20])
    return lab, "truncated|corrupt"


def truncate_image(src, layout):
    img = src / "imagesTr" / names(layout, 2)[0]
    img.write_bytes(img.read_bytes()[:300])
    return img, "truncated|corrupt"


def zero_byte_label(src, layout):
    lab = src / "labelsTr" / names(layout, 2)[1]
    lab.write_bytes(b"")
    return lab, "empty"


def label_value_3(src, layout):
    from conftest import write_nifti

    lab = src / "labelsTr" / names(layout, 2)[1]
    arr = np.zeros(SHAPE, np.uint8)
    arr[2:4, 3:6, 3:6] = 3
    write_nifti(lab, arr, spacing=(1.5, 1.5, 3.0))
    return lab, r"\[0, 3\]|\[3\]"


def orphan_image(src, layout):
    lab = src / "labelsTr" / names(layout, 2)[1]
    lab.unlink()
    return src / "imagesTr" / names(layout, 2)[0], "has no label"


def orphan_label(src, layout):
    img = src / "imagesTr" / names(layout, 2)[0]
    img.unlink()
    return src / "labelsTr" / names(layout, 2)[1], "has no image"


def second_channel(src, layout):
    from conftest import write_nifti

    stem = names(layout, 2)[0].replace("_0000.nii.gz", "").replace(".nii.gz", "")
    extra = src / "imagesTr" / f"{stem}_0001.nii.gz"
    write_nifti(extra, np.zeros(SHAPE, np.float32), spacing=(1.5, 1.5, 3.0))
    return extra, "channel 0001|no label|not a channel-0"


def not_nifti(src, layout):
    junk = src / "labelsTr" / "notes.txt"
    junk.write_text("a note left by a colleague")
    return junk, "not a"


DEFECTS = [truncate_label, truncate_image, zero_byte_label, label_value_3, orphan_image, orphan_label,
           second_channel, not_nifti]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("defect", DEFECTS, ids=lambda d: d.__name__)
def test_every_defect_in_both_modes(tmp_path, layout, defect):
    src = make_source(tmp_path / "src", layout)
    damaged, problem = defect(src, layout)
    before = tree_hashes(src)
    with pytest.raises(InputError, match=problem) as err:
        import_and_prepare(src, tmp_path / "w1", layout, "error", foreground_labels=[1] if layout == "decathlon" else None)
    assert str(damaged) in str(err.value), "the message names the user's own file"
    assert not list((tmp_path / "w1" / "prep").glob("*.tsv")) if (tmp_path / "w1" / "prep").exists() else True

    results = import_and_prepare(src, tmp_path / "w2", layout, "exclude",
                                 foreground_labels=[1] if layout == "decathlon" else None)
    excluded = pd.concat([ex for _, ex in results.values()])
    kept = pd.concat([df for df, _ in results.values()])
    origins = set(excluded.origin) | set(excluded.file)
    assert str(damaged) in origins, excluded
    assert excluded.reason.str.contains(problem).any()
    n_cases = 3 * len(CENTERS[layout])
    assert len(kept) >= n_cases - 1 and len(kept) + excluded.case_id.nunique() >= n_cases, "never silently shorter"
    assert tree_hashes(src) == before, "the source folder is never modified"


def test_misnamed_files_are_reported_not_skipped(tmp_path):
    """Issue 16, item 3: AHN-0004, ahn_0004 and scan4 files (and their labels) were skipped without a word."""
    src = make_source(tmp_path / "src", "panseg")
    misnamed = []
    for img, lab in [("AHN-0004_0000.nii.gz", "AHN-0004.nii.gz"), ("ahn_0005_0000.nii.gz", "ahn_0005.nii.gz"),
                     ("scan4_0000.nii.gz", "scan4.nii.gz")]:
        case_pair(src / "imagesTr" / img, src / "labelsTr" / lab)
        misnamed += [src / "imagesTr" / img, src / "labelsTr" / lab]
    with pytest.raises(InputError, match="not a channel-0 NIfTI image name") as err:
        import_and_prepare(src, tmp_path / "w", "panseg", "error")
    assert "AHN-0004_0000.nii.gz" in str(err.value)
    results = import_and_prepare(src, tmp_path / "w2", "panseg", "exclude")
    ahn, mcf = results["AHN"][1], results["MCF"][1]
    assert set(ahn.origin) == {str(p) for p in misnamed}  # AHN-... and ahn_... are AHN's; scan4 everyone's
    assert set(mcf.origin) == {str(src / "imagesTr" / "scan4_0000.nii.gz"), str(src / "labelsTr" / "scan4.nii.gz")}
    assert len(results["AHN"][0]) == 3 and len(results["MCF"][0]) == 3


def test_auto_layout_survives_one_misfit(tmp_path):
    """Issue 16, item 4: one orphan or misnamed file no longer fails the whole source with a misleading message."""
    src = make_source(tmp_path / "src", "panseg")
    case_pair(src / "imagesTr" / "scan4_0000.nii.gz", src / "labelsTr" / "scan4.nii.gz")
    (src / "labelsTr" / "AHN_0003.nii.gz").unlink()
    summary = local.fetch({"path": str(src)}, tmp_path / "raw")
    assert summary["layout"] == "panseg"
    src2 = make_source(tmp_path / "src2", "nnunet")
    (src2 / "labelsTr" / "case_03.nii.gz").unlink()
    case_pair(src2 / "imagesTr" / "weird.nii.gz", src2 / "labelsTr" / "other.nii.gz")
    summary = local.fetch({"path": str(src2), "center": "ABC"}, tmp_path / "raw2")
    assert summary["layout"] == "nnunet" and summary["cases"] == 2 and summary["not_imported"] == 3


def test_auto_layout_tie_names_examples(tmp_path):
    src = tmp_path / "src"
    case_pair(src / "imagesTr" / "case_a_0000.nii.gz", src / "labelsTr" / "case_a.nii.gz")
    case_pair(src / "imagesTr" / "pancreas_001.nii.gz", src / "labelsTr" / "pancreas_001.nii.gz")
    with pytest.raises(InputError, match=r"ambiguous: 1 pairs each follow nnunet and decathlon .*case_a_0000.nii.gz"
                                         r".*pancreas_001.nii.gz"):
        local.fetch({"path": str(src), "center": "ABC"}, tmp_path / "raw")


def test_truncated_label_is_never_rewritten(tmp_path):
    """Issue 16, item 1 with foreground_labels: a truncated label used to be merged and written as a valid file."""
    src = make_source(tmp_path / "src", "decathlon")
    lab = src / "labelsTr" / "pancreas_002.nii.gz"
    lab.write_bytes(lab.read_bytes()[:-20])
    summary = local.fetch({"path": str(src), "center": "MSD", "foreground_labels": [1]}, tmp_path / "raw")
    assert summary["labels_merged"] == 2 and not (tmp_path / "raw" / "labelsTr" / "MSD_0002.nii.gz").exists()


def test_error_names_the_user_file_behind_the_link(tmp_path):
    src = make_source(tmp_path / "src", "nnunet")
    lab = src / "labelsTr" / "case_02.nii.gz"
    lab.write_bytes(lab.read_bytes()[:-5])
    with pytest.raises(InputError) as err:
        import_and_prepare(src, tmp_path / "w", "nnunet", "error")
    assert str(tmp_path / "w" / "raw" / "labelsTr" / "ABC_0002.nii.gz") in str(err.value)  # the link prepare read
    assert f"(from {lab})" in str(err.value)  # and the user's own file


def test_misfits_of_every_center_reported_once_in_the_manifest(tmp_path):
    from workflow_scripts.data.manifest import build_manifest

    src = make_source(tmp_path / "src", "panseg")
    case_pair(src / "imagesTr" / "scan4_0000.nii.gz", src / "labelsTr" / "scan4.nii.gz")
    import_and_prepare(src, tmp_path / "w", "panseg", "exclude")
    _, excluded = build_manifest(sorted((tmp_path / "w" / "prep").glob("[A-Z]*[A-Z].tsv")))
    assert sorted(Path(f).name for f in excluded.file) == ["scan4.nii.gz", "scan4_0000.nii.gz"]


def test_inventory_counts_litter_and_flags_subfolders(tmp_path):
    src = make_source(tmp_path / "src", "panseg")
    (src / "imagesTr" / "._AHN_0001_0000.nii.gz").write_bytes(b"junk")
    (src / "imagesTr" / ".DS_Store").write_bytes(b"junk")
    (src / "labelsTr" / "old").mkdir()
    shutil.copy(src / "labelsTr" / "AHN_0001.nii.gz", src / "labelsTr" / "old" / "AHN_0001.nii.gz")
    inv = dataset_inventory(*find_dataset_dirs(src))
    assert inv.litter == 2
    (bad,) = [e for e in inv.entries if e.problem]
    assert bad.center == "AHN" and "sub-folder" in bad.problem


@pytest.mark.parametrize("mode", ["link", "copy"])
def test_source_folder_is_never_modified(tmp_path, mode):
    """Import (PanSegData folder with a zip, and a Decathlon folder whose labels are merged) and prepare
    with a damaged file in each: a hash listing of the user's folders is the same before and after."""
    from source_data import decathlon_tree, panseg_tree

    mri = tmp_path / "mri"
    panseg_tree(mri, "t1", centers=("AHN",), n=2)
    panseg_tree(tmp_path / "t2build", "t2", centers=("NYU",), n=2)
    shutil.make_archive(str(mri / "t2"), "zip", tmp_path / "t2build")
    (mri / "t1" / "labelsTr" / "AHN_0002.nii.gz").write_bytes(b"\x1f\x8b broken")
    msd = tmp_path / "msd"
    decathlon_tree(msd, numbers=(1, 2))
    lab = msd / "Task07_Pancreas" / "labelsTr" / "pancreas_002.nii.gz"
    lab.write_bytes(lab.read_bytes()[:-7])
    before = {folder: tree_hashes(folder) for folder in (mri, msd)}
    local.fetch({"path": str(mri), "mode": mode}, tmp_path / "raw_mri")
    local.fetch({"path": str(msd), "mode": mode, "center": "MSD", "foreground_labels": [1, 2]}, tmp_path / "raw_msd")
    for raw, center in ((tmp_path / "raw_mri" / "t1", "AHN"), (tmp_path / "raw_mri" / "t2", "NYU"),
                        (tmp_path / "raw_msd", "MSD")):
        prepare_center(raw, "CT", center, "train-cv", tmp_path / "p" / f"{center}.tsv", tmp_path / "fixed",
                       on_bad_case="exclude", header_mismatch="use_image", data_source="t")
    assert {folder: tree_hashes(folder) for folder in (mri, msd)} == before
