"""The synthetic demo source: deterministic, heterogeneous across centers, in the real raw layout."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from workflow_scripts.data.synthetic import (PARTICIPANT_REGEX, RATER_FOLDERS, annotated_cases, generate,
                                        perturb_boundary, plan_scans)
from workflow_scripts.data.prepare import load_participants


def arrays(root, case, folder="t1"):
    img = sitk.ReadImage(str(root / folder / "imagesTr" / f"{case}_0000.nii.gz"))
    lab = sitk.ReadImage(str(root / folder / "labelsTr" / f"{case}.nii.gz"))
    return img, lab


@pytest.mark.workflow  # writes whole synthetic studies (seconds each)
def test_layout_determinism_and_labels(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        generate(out, modalities=("T1", "CT"), centers=("AHN", "MCF", "MCA", "NYU"), cases_per_center=3, seed=5)
    assert "SYNTHETIC" in (a / "SYNTHETIC_DATA.txt").read_text(encoding="utf-8")
    files = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    main_files = [f for f in files if f.parent.name in ("imagesTr", "labelsTr")]
    assert len(main_files) == 2 * 4 * 3 * 2
    # One of 3 cases per modality x center has a second rater's and a repeated annotation.
    assert len(files) - len(main_files) == 2 * 4 * 1 * 2
    for f in files:
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / f))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(b / f)))), f
    img, lab = arrays(a, "AHN_0001")
    assert img.GetSize() == lab.GetSize() and img.GetDirection() == lab.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(lab))) == {0, 1}
    assert (a / "ct" / "imagesTr" / "MCA_0003_0000.nii.gz").exists()


@pytest.mark.workflow  # writes whole synthetic studies (seconds each)
def test_centers_differ_and_anisotropic(tmp_path):
    generate(tmp_path, modalities=("T2",), centers=("AHN", "MCF", "MCA", "NWU"), cases_per_center=2, seed=1)
    spacings, directions, means = set(), set(), []
    for c in ("AHN", "MCF", "MCA", "NWU"):
        img, lab = arrays(tmp_path, f"{c}_0001", "t2")
        sx, sy, sz = img.GetSpacing()
        assert sz > 1.2 * sx  # thick slices
        spacings.add(round(sx, 1))
        directions.add(img.GetDirection())
        means.append(sitk.GetArrayFromImage(img).mean())
    assert len(spacings) >= 3 and len(directions) >= 3
    assert np.ptp(means) > 0.1 * np.mean(means)  # intensity scale/offset differ by center


@pytest.mark.workflow  # writes whole synthetic studies (seconds each)
def test_volumes_vary_and_repeat_participants(tmp_path):
    plans = plan_scans(["T1"], ["AHN", "MCF", "MCA", "NYU"], 8, seed=3)
    generate(tmp_path, modalities=("T1",), centers=("AHN", "MCF", "MCA", "NYU"), cases_per_center=8, seed=3)
    participants = load_participants(tmp_path / "T1-name_mapping.json", PARTICIPANT_REGEX)
    assert len(participants) == len(plans) == 32
    assert len(set(participants.values())) < len(participants)  # some participants scanned twice
    vols = []
    for p in plans[:8]:
        _, lab = arrays(tmp_path, p.case_id)
        vols.append(sitk.GetArrayFromImage(lab).sum() * np.prod(lab.GetSpacing()) / 1000)
    assert min(vols) > 15 and max(vols) < 150 and max(vols) / min(vols) > 1.3
    mapping = json.loads((tmp_path / "T1-name_mapping.json").read_text(encoding="utf-8"))
    assert "Not included" in mapping.values()


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_perturb_boundary_changes_only_the_border():
    zz, yy, xx = np.indices((20, 30, 30))
    lab = ((zz - 10) ** 2 / 36 + (yy - 15) ** 2 / 81 + (xx - 15) ** 2 / 81) <= 1
    a = perturb_boundary(lab, np.random.default_rng(1), 0.6)
    b = perturb_boundary(lab, np.random.default_rng(1), 0.6)
    assert np.array_equal(a, b)  # deterministic from the generator's seed
    from scipy import ndimage

    face = ndimage.generate_binary_structure(3, 1)
    changed = a ^ lab
    assert changed.any()
    # Every change is within one voxel of the original border.
    assert not (changed & ndimage.binary_erosion(lab, face, iterations=1)).any()
    assert not (changed & ~ndimage.binary_dilation(lab, face, iterations=1)).any()
    assert (a & ~lab).any() and (lab & ~a).any()  # grown and shrunk in places
    weak = perturb_boundary(lab, np.random.default_rng(1), 0.3)
    assert 0.7 < dice(a, lab) < dice(weak, lab) < 1.0
    assert np.array_equal(perturb_boundary(lab, np.random.default_rng(1), 0.0), lab)


@pytest.mark.workflow  # writes whole synthetic studies (seconds each)
def test_extra_annotations_written_beside_labels(tmp_path):
    plans = generate(tmp_path, modalities=("T1",), centers=("AHN", "MCF"), cases_per_center=3, seed=11)
    chosen = annotated_cases(plans, 11, 1 / 3)
    assert len(chosen) == 2 and {c.split("_")[0] for _, c in chosen} == {"AHN", "MCF"}  # 1 per center
    assert len(annotated_cases(plan_scans(["T1"], ["AHN", "MCF"], 6, 11), 11, 1 / 3)) == 4  # 2 of 6 per center
    for kind, folder in RATER_FOLDERS.items():
        written = sorted(p.name for p in (tmp_path / "t1" / folder).iterdir())
        assert written == sorted(f"{c}.nii.gz" for _, c in chosen)
    for _, case in chosen:
        _, lab = arrays(tmp_path, case)
        ref = sitk.GetArrayFromImage(lab) > 0
        d = {}
        for kind, folder in RATER_FOLDERS.items():
            extra = sitk.ReadImage(str(tmp_path / "t1" / folder / f"{case}.nii.gz"))
            assert extra.GetSize() == lab.GetSize() and extra.GetDirection() == lab.GetDirection()
            assert extra.GetOrigin() == lab.GetOrigin() and extra.GetSpacing() == lab.GetSpacing()
            arr = sitk.GetArrayFromImage(extra)
            assert set(np.unique(arr)) == {0, 1}
            d[kind] = dice(arr > 0, ref)
        assert 0.6 < d["rater2"] < d["repeat"] < 1.0  # the same rater agrees more with themself
    # Images and labels do not depend on whether extra annotations are written.
    generate(tmp_path / "none", modalities=("T1",), centers=("AHN", "MCF"), cases_per_center=3, seed=11,
             annotation_fraction=0)
    assert not (tmp_path / "none" / "t1" / "labelsTr_rater2").exists()
    for case in ("AHN_0001", "MCF_0003"):
        for a, b in zip(arrays(tmp_path, case), arrays(tmp_path / "none", case)):
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
