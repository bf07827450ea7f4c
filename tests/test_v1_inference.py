"""End-to-end equivalence with nnU-Net v1's own predictor: tiny v1 networks trained for seconds here
(masks with real foreground), saved in v1's folder layout, predicted by v1 (PyPI nnunet 1.7.1,
``nnunet.inference.predict.predict_cases``, no test-time mirroring) and by this workflow from the
imported bundle (``bundle predict``, ``segment`` on NIfTI and DICOM): per-case Dice >= 0.999 and
softmax probabilities within 1e-4, on scans that need resampling (anisotropic, other sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("nnunet", reason="nnU-Net v1 (PyPI nnunet 1.7.1, installed by `make install`)")

import v1_models as V  # noqa: E402
from dicom_series import write_series  # noqa: E402
from helpers import REPO  # noqa: E402
from workflow_scripts.deployment import bundle as B  # noqa: E402
from workflow_scripts.deployment import bundle_predict  # noqa: E402
from workflow_scripts.deployment import segment
from workflow_scripts.deployment import v1_import

torch.set_num_threads(1)
PATCH = [12, 32, 32]  # in the plans' (transposed) axis order
TARGET = [2.0, 1.0, 1.0]
POOL = [[1, 2, 2], [2, 2, 2], [2, 2, 2]]
CONV = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
# (shape, spacing) of the test scans in the plans' axis order: at the training spacing and size; thick slices
# (resampled with a separate axis, order 0 across); an isotropic-ish grid of another size (order 3)
SCANS = [((20, 48, 48), [2.0, 1.0, 1.0]), ((8, 50, 44), [5.0, 1.0, 1.0]), ((24, 40, 56), [1.7, 1.3, 0.9])]
# unet: CT normalisation, identity transpose; pansegnet: z-score inside the nonzero mask, axes transposed
MODELS = {"unet": dict(trainer="nnUNetTrainerV2", scheme="CT", use_mask=False, transpose=(0, 1, 2)),
          "pansegnet": dict(trainer="nnTransUNetTrainerV2", scheme="nonCT", use_mask=True, transpose=(1, 0, 2))}


def write(path, array, spacing_zyx, direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    if direction:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def case_in_original_axes(shape, spacing, rng, transpose):
    """A synthetic scan made in the plans' axis order, stored in the original order v1 transposes from."""
    image, label = V.synthetic_case(shape, rng, blob_radius=0.4)
    back = list(np.argsort(transpose))
    return np.round(image).transpose(back), label.transpose(back), list(np.array(spacing)[back])


# Every test here imports and runs a v1 model end to end (about 20 s per model).
pytestmark = pytest.mark.workflow

@pytest.fixture(scope="module", params=sorted(MODELS))
def v1_model(request, tmp_path_factory):
    """A trained v1 model folder, its imported bundle, test scans and v1's own predictions of them."""
    from nnunet.preprocessing.preprocessing import GenericPreprocessor

    kind, spec = request.param, MODELS[request.param]
    root = tmp_path_factory.mktemp(f"v1-{kind}")
    plans = V.v1_plans(PATCH, TARGET, POOL, CONV, scheme=spec["scheme"], use_mask=spec["use_mask"],
                       transpose=spec["transpose"])
    pre = GenericPreprocessor(plans["normalization_schemes"], plans["use_mask_for_norm"], plans["transpose_forward"],
                              plans["dataset_properties"]["intensityproperties"])
    rng = np.random.default_rng(1)
    images, labels = [], []
    for i in range(4):  # training data through v1's own preprocessing
        image, label, spacing = case_in_original_axes((20, 48, 48), TARGET, rng, spec["transpose"])
        fi, fl = write(root / f"tr{i}_0000.nii.gz", image, spacing), write(root / f"tr{i}.nii.gz", label, spacing)
        data, seg, _ = pre.preprocess_test_case([str(fi)], np.array(TARGET), seg_file=str(fl))
        images.append(data[0])
        labels.append(np.maximum(seg[0], 0).astype(np.int64))
    net = V.generic_unet(plans) if kind == "unet" else V.naive_pansegnet(plans)
    V.train(net, images, labels, PATCH, iterations=80)
    folder = V.save_v1_folder(root / "model", spec["trainer"], net, plans, validation=["tr0", "tr2"],
                              postprocessing={"for_which_classes": [1], "min_valid_object_sizes": "None"},
                              pp_level="top")
    scans = []
    for k, (shape, spacing) in enumerate(SCANS):
        image, _, sp = case_in_original_axes(shape, spacing, rng, spec["transpose"])
        direction = (1, 0, 0, 0, -1, 0, 0, 0, 1) if k == 2 else None  # v1 ignores it and writes it back
        scans.append(write(root / f"scan{k}_0000.nii.gz", image.astype(np.float32), sp, direction))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "v1_reference.py"), str(folder), str(root / "v1"),
                           *map(str, scans)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bundle = v1_import.import_v1(folder, root / f"released_{kind}.tar", "T1", kind, mirroring=False)
    return dict(kind=kind, root=root, folder=folder, bundle=bundle, scans=scans, v1=root / "v1")


def v1_mask(model, k):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(model["v1"] / f"{k}.nii.gz")))


def dice(a, b):
    a, b = a > 0, b > 0
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_bundle_predict_gives_v1_masks(v1_model, tmp_path):
    cases = pd.DataFrame({"case_id": [f"c{k}" for k in range(len(SCANS))], "image": list(map(str, v1_model["scans"]))})
    cases.to_csv(tmp_path / "cases.tsv", sep="\t", index=False)
    out = tmp_path / "masks"
    code = B.main(["predict", "--bundle", str(v1_model["bundle"]), "--cases", str(tmp_path / "cases.tsv"),
                   "--out", str(out), "--device", "cpu", "--threads", "1"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"c{k}.nii.gz" for k in range(len(SCANS))]  # nothing else
    for k in range(len(SCANS)):
        ref = v1_mask(v1_model, k)
        assert 0.01 <= np.count_nonzero(ref) / ref.size <= 0.5, "the trained model must find real foreground"
        mask = sitk.ReadImage(str(out / f"c{k}.nii.gz"))
        scan = sitk.ReadImage(str(v1_model["scans"][k]))
        assert mask.GetSpacing() == scan.GetSpacing() and mask.GetDirection() == scan.GetDirection()
        assert dice(sitk.GetArrayFromImage(mask), ref) >= 0.999, k


def test_probabilities_equal_v1(v1_model, tmp_path):
    with B.opened(v1_model["bundle"], tmp_path) as b:
        predictor, _, _ = bundle_predict.load_predictor(b, torch.device("cpu"), mirroring=False, step_size=0.5)
        for k, scan in enumerate(v1_model["scans"]):
            network, export, _ = predictor.probabilities([str(scan)])
            ref = np.load(v1_model["v1"] / f"{k}.npz")
            assert network.shape == ref["network"].shape and export.shape == ref["export"].shape
            assert np.abs(network - ref["network"]).max() <= 1e-4, k
            assert np.abs(export - ref["export"]).max() <= 1e-4, k


def test_segment_runs_imported_bundle_on_nifti_and_dicom(v1_model, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    os.symlink(v1_model["scans"][2], scans / "other_0000.nii.gz")
    write_series(sitk.ReadImage(str(v1_model["scans"][1])), scans / "series", "1.2.826.0.1.3680043.8.498.77")
    summary, info = segment.run(v1_model["bundle"], scans, tmp_path / "seg", device="cpu", threads=1)
    assert info["inference_semantics"] == "v1" and not info["mirroring"]
    ok = summary.set_index("scan")
    assert (ok.status == "ok").all(), ok.error.tolist()
    assert dice(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg" / ok.loc["other", "mask"]))),
                v1_mask(v1_model, 2)) >= 0.999
    # the DICOM series of the thick-slice scan as SimpleITK reads it: the same voxels (integer intensities)
    # in the same order (identity direction), so v1's mask of the NIfTI
    assert dice(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg" / ok.loc["series", "mask"]))),
                v1_mask(v1_model, 1)) >= 0.999


def test_bundle_records_the_v1_model(v1_model, tmp_path):
    info = B.extract(v1_model["bundle"], tmp_path).info
    assert info["format_version"] == 2 and info["inference_semantics"] == "v1"
    assert info["postprocessing"]["source"] == "postprocessing.json"
    assert info["v1_validation_cases"] == {"0": {"cases": ["tr0", "tr2"], "source": "fold_0/validation_raw/summary.json"}}
    assert info["source"]["trainer"] == MODELS[v1_model["kind"]]["trainer"]
    plans = json.loads(next(tmp_path.glob("*/plans.json")).read_text())
    assert plans["panseg_v1"]["transpose_forward"] == list(MODELS[v1_model["kind"]]["transpose"])
