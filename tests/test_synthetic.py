"""The synthetic demo source: deterministic, heterogeneous across centers, in the real raw layout."""

import json

import numpy as np
import SimpleITK as sitk

from workflow_scripts.synthetic import PARTICIPANT_REGEX, generate, plan_scans
from workflow_scripts.prepare import load_participants


def arrays(root, case, folder="t1"):
    img = sitk.ReadImage(str(root / folder / "imagesTr" / f"{case}_0000.nii.gz"))
    lab = sitk.ReadImage(str(root / folder / "labelsTr" / f"{case}.nii.gz"))
    return img, lab


def test_layout_determinism_and_labels(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        generate(out, modalities=("T1", "CT"), centers=("AHN", "MCF", "MCA", "NYU"), cases_per_center=3, seed=5)
    assert "SYNTHETIC" in (a / "SYNTHETIC_DATA.txt").read_text()
    files = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    assert len(files) == 2 * 4 * 3 * 2
    for f in files:
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / f))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(b / f)))), f
    img, lab = arrays(a, "AHN_0001")
    assert img.GetSize() == lab.GetSize() and img.GetDirection() == lab.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(lab))) == {0, 1}
    assert (a / "ct" / "imagesTr" / "MCA_0003_0000.nii.gz").exists()


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
    mapping = json.loads((tmp_path / "T1-name_mapping.json").read_text())
    assert "Not included" in mapping.values()
