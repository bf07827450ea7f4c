"""Model bundles: what the workflow exports, reproducibility, and every way a bundle is refused."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from workflow_scripts.deployment import bundle as B

FOLDS = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text(encoding="utf-8"))["folds"]
MODELS = {"nnunet": "workflow_scripts.trainers.nnunet:NnUNetTrainer",
          "pansegnet": "workflow_scripts.trainers.pansegnet:PanSegNetTrainer"}


def bundle_file(study: Path, model: str) -> Path:
    return study / "results" / "T1" / model / "bundle" / f"panseg_T1_{model}.tar"


def model_folder(study: Path, model: str) -> Path:
    cls = MODELS[model].partition(":")[2]
    return study / "results" / "T1" / model / "Dataset901_T1" / f"{cls}__nnUNetPlans__3d_fullres"


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a tar member by member; change(name, data) returns new bytes, or None to drop the member."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else b""
            new = change(m.name, data)
            if new is None:
                continue
            m.size = len(new)
            tout.addfile(m, io.BytesIO(new))
    return dst


def make_tar(path: Path, members) -> Path:
    """members: (TarInfo kwargs, bytes) pairs."""
    with tarfile.open(path, "w") as tf:
        for kwargs, data in members:
            info = tarfile.TarInfo(kwargs.pop("name"))
            for k, v in kwargs.items():
                setattr(info, k, v)
            info.size = len(data) if info.isfile() else 0
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


# ---- what the workflow exports ------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(MODELS))
def test_workflow_exports_a_complete_bundle(tiny_study, tmp_path, model):
    path = bundle_file(tiny_study, model)
    with tarfile.open(path) as tf:
        names = sorted(tf.getnames())
    top = f"panseg_T1_{model}"
    assert names == sorted(f"{top}/{n}" for n in [
        "bundle.json", "plans.json", "dataset.json", "dataset_fingerprint.json", "SHA256SUMS",
        *(f"fold_{k}/{f}" for k in range(FOLDS) for f in ("checkpoint_final.pth", "train_info.json"))])
    b = B.extract(path, tmp_path)
    info = b.info
    assert info["format"] == "panseg-bundle" and info["format_version"] == 1
    assert (info["modality"], info["model"], info["trainer"], info["configuration"]) == (
        "T1", model, MODELS[model], "3d_fullres")
    assert info["folds"] == list(range(FOLDS)) and info["inference"] == {"mirroring": False, "step_size": 0.5}
    assert info["labels"] == {"background": 0, "pancreas": 1} and info["reader"] == "NibabelIOWithReorient"
    v = info["versions"]
    assert v["python"].startswith("3.") and v["torch"] and v["nnunetv2"] == "2.8.1"
    assert "workflow_commit" in v  # a commit hash inside a git checkout, null outside
    assert [t["fold"] for t in info["training"]] == list(range(FOLDS))
    plans = json.loads((b.root / "plans.json").read_text())
    if model == "pansegnet":  # the transformer's size travels with the plans
        assert plans["panseg_network"] == info["network"] == {"d_model": 16, "heads": 2, "layers": 1, "ff_dim": 16,
                                                               "dropout": 0.1}
    # the manifest is sha256sum's format and covers every other file
    lines = (b.root / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
    assert set(listed) == {n.removeprefix(top + "/") for n in names} - {"SHA256SUMS"}
    for rel, digest in listed.items():
        assert B.sha256_file(b.root / rel) == digest


def test_export_is_byte_reproducible(tiny_study, tmp_path):
    folder = model_folder(tiny_study, "nnunet")
    cks = [folder / f"fold_{k}" / "checkpoint_final.pth" for k in (1, 0)]
    outs = [B.export_bundle(folder, cks, MODELS["nnunet"], "3d_fullres", "T1", "nnunet", tmp_path / d / "x.tar")
            for d in ("a", "b")]
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert B.extract(outs[0], tmp_path / "x").info["folds"] == [0, 1]


def test_export_names_a_missing_model_file(tiny_study, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_folder(tiny_study, "nnunet"), folder)
    (folder / "dataset_fingerprint.json").unlink()
    with pytest.raises(B.InputError, match="dataset_fingerprint.json: file does not exist"):
        B.export_bundle(folder, [folder / "fold_0" / "checkpoint_final.pth"], MODELS["nnunet"], "3d_fullres", "T1",
                        "nnunet", tmp_path / "x.tar")


# ---- refused bundles ----------------------------------------------------------------------
def test_tampered_checkpoint_is_refused(tiny_study, tmp_path):
    def flip(name, data):
        if name.endswith("fold_1/checkpoint_final.pth"):
            return data[:-100] + bytes([data[-100] ^ 1]) + data[-99:]
        return data

    bad = rewrite(bundle_file(tiny_study, "nnunet"), tmp_path / "bad.tar", flip)
    dest = tmp_path / "out"
    with pytest.raises(B.BundleError, match=r"fold_1/checkpoint_final.pth: sha256 does not match SHA256SUMS") as e:
        B.extract(bad, dest)
    assert str(bad) in str(e.value)
    assert not any(p.is_file() for p in dest.rglob("*"))  # nothing left behind


@pytest.mark.parametrize("change, message", [
    (lambda n, d: None if n.endswith("fold_0/train_info.json") else d, "fold_0/train_info.json: listed in SHA256SUMS but missing"),
    (lambda n, d: None if n.endswith("SHA256SUMS") else d, "has no SHA256SUMS"),
    (lambda n, d: d.replace(b"3d_fullres", b"2d") if n.endswith("bundle.json") else d,
     "bundle.json: sha256 does not match"),
])
def test_altered_bundle_is_refused(tiny_study, tmp_path, change, message):
    bad = rewrite(bundle_file(tiny_study, "nnunet"), tmp_path / "bad.tar", change)
    with pytest.raises(B.BundleError, match=message):
        B.extract(bad, tmp_path / "out")


def test_unlisted_file_is_refused(tiny_study, tmp_path):
    src = bundle_file(tiny_study, "nnunet")
    dst = rewrite(src, tmp_path / "bad.tar", lambda n, d: d)
    with tarfile.open(dst, "a") as tf:
        info = tarfile.TarInfo("panseg_T1_nnunet/extra.py")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"x=1\n"))
    with pytest.raises(B.BundleError, match="extra.py: in the bundle but not listed in SHA256SUMS"):
        B.extract(dst, tmp_path / "out")


FILE = {"type": tarfile.REGTYPE}


@pytest.mark.parametrize("members, message", [
    ([({"name": "/etc/evil", **FILE}, b"x")], "absolute path"),
    ([({"name": "b/../../evil", **FILE}, b"x")], "climbs out"),
    ([({"name": "b/link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, b"")], "is a link"),
    ([({"name": "b/ok", **FILE}, b"x"), ({"name": "b/hard", "type": tarfile.LNKTYPE, "linkname": "b/ok"}, b"")],
     "is a link"),
    ([({"name": "b/dev", "type": tarfile.CHRTYPE}, b"")], "device, FIFO"),
    ([({"name": "b/fifo", "type": tarfile.FIFOTYPE}, b"")], "device, FIFO"),
    ([({"name": "b/x", **FILE}, b"1"), ({"name": "b/x", **FILE}, b"2")], "appears twice"),
    ([({"name": "a/x", **FILE}, b"1"), ({"name": "b/y", **FILE}, b"2")], "one top folder"),
    ([({"name": "loose", **FILE}, b"1")], "outside the bundle's top folder"),
    ([({"name": "b/we ird", **FILE}, b"1")], "names may hold only"),
    # backslashes count as separators (the check shared with source archives, common.safe_archive)
    ([({"name": "b\\..\\evil", **FILE}, b"1")], "climbs out of the target"),
    ([({"name": "b\\evil", **FILE}, b"1")], "names may hold only"),
])
def test_unsafe_members_are_refused_before_writing(tmp_path, members, message):
    bad = make_tar(tmp_path / "bad.tar", [(dict(kw), data) for kw, data in members])
    dest = tmp_path / "out"
    with pytest.raises(B.BundleError, match=message) as e:
        B.extract(bad, dest)
    assert str(bad) in str(e.value)
    assert not dest.exists() or not any(dest.iterdir())
    assert not (tmp_path / "evil").exists()


def test_not_a_tar_is_refused(tmp_path):
    path = tmp_path / "x.tar"
    path.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(B.BundleError, match="not a readable tar archive"):
        B.extract(path, tmp_path / "out")


class Evil:
    """Unpickling this would create a file: the stand-in for arbitrary code in a checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_pickled_code_is_not_executed(tiny_study, tmp_path):
    """A bundle whose manifest is right but whose checkpoint carries code: loading it refuses the
    code (torch.load(weights_only=True)) and the code never runs."""
    import shutil

    import torch

    from workflow_scripts.deployment import segment

    folder = tmp_path / "model"
    shutil.copytree(model_folder(tiny_study, "nnunet"), folder, ignore=shutil.ignore_patterns("fold_1"))
    marker = tmp_path / "pwned"
    ck = folder / "fold_0" / "checkpoint_final.pth"
    good = torch.load(ck, weights_only=False)
    torch.save({**good, "payload": Evil(marker)}, ck)
    path = B.export_bundle(folder, [ck], MODELS["nnunet"], "3d_fullres", "T1", "nnunet", tmp_path / "evil.tar")
    B.extract(path, tmp_path / "x")  # the manifest is consistent: the archive itself is fine
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(next((tiny_study / "data" / "raw" / "synthetic" / "t1" / "imagesTr").glob("NYU_*")), scans)
    with pytest.raises(B.BundleError, match=r"evil.tar: the model cannot be loaded \(UnpicklingError"):
        segment.run(path, scans, tmp_path / "seg", device="cpu", threads=1)
    assert not marker.exists()


def test_verify_command(tiny_study, tmp_path, capsys):
    assert B.main(["verify", str(bundle_file(tiny_study, "pansegnet"))]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "pansegnet" and len(out["sha256"]) == 64
    bad = rewrite(bundle_file(tiny_study, "pansegnet"), tmp_path / "bad.tar",
                  lambda n, d: d + b"\0" if n.endswith("plans.json") else d)
    assert B.main(["verify", str(bad)]) == 2


# ---- bundle predict (a table of scans) ---------------------------------------------------------
def test_predict_command_gives_the_workflow_masks(tiny_study, tmp_path):
    """`bundle predict` on a native bundle: nnU-Net v2's predictor, the workflow's own ensemble masks."""
    import numpy as np
    import pandas as pd
    import SimpleITK as sitk

    raw = tiny_study / "data" / "raw" / "synthetic" / "t1" / "imagesTr"
    cases = pd.DataFrame({"case_id": ["NYU_0001", "NYU_0002"],
                          "image": [str(raw / f"{c}_0000.nii.gz") for c in ("NYU_0001", "NYU_0002")], "extra": "x"})
    cases.to_csv(tmp_path / "cases.tsv", sep="\t", index=False)
    out = tmp_path / "masks"
    assert B.main(["predict", "--bundle", str(bundle_file(tiny_study, "pansegnet")), "--cases",
                   str(tmp_path / "cases.tsv"), "--out", str(out), "--device", "cpu", "--threads", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["NYU_0001.nii.gz", "NYU_0002.nii.gz"]
    for case in cases.case_id:
        ref = tiny_study / "results" / "T1" / "pansegnet" / "centers" / "NYU" / "ensemble_masks" / f"{case}.nii.gz"
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz"))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(ref))))


@pytest.mark.parametrize("table, message", [
    ("case\timage\nA\tx.nii.gz\n", "lacks column.*case_id"),
    ("case_id\timage\nA\t{img}\nA\t{img}\n", "case_id 'A' appears more than once"),
    ("case_id\timage\nA\t/nowhere/x.nii.gz\n", "image /nowhere/x.nii.gz does not exist"),
    ("case_id\timage\n../A\t{img}\n", "case_id '../A': ids are"),
])
def test_predict_command_refuses_bad_tables(tmp_path, table, message):
    from workflow_scripts.deployment.bundle_predict import read_cases

    img = tmp_path / "x.nii.gz"
    img.write_bytes(b"")
    path = tmp_path / "cases.tsv"
    path.write_text(table.format(img=img))
    with pytest.raises(B.InputError, match=message) as e:
        read_cases(path)
    assert str(e.value).startswith(str(path))
