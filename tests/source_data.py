"""Tiny datasets in the real layouts, written by the tests (no patient data), and server fixtures."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import blob, write_nifti
from fake_osf import FakeOSF

SHAPE = (6, 10, 10)


def case_pair(img_path, lab_path, seed=0, label_values=(1,)):
    """A small image and a blob label; with two label values the blob's top half gets the second."""
    rng = np.random.default_rng(seed)
    write_nifti(img_path, rng.normal(100, 10, size=SHAPE).astype(np.float32), spacing=(1.5, 1.5, 3.0))
    lab = blob(SHAPE, centre=(3, 5, 5), radius=2).astype(np.uint8) * label_values[0]
    if len(label_values) > 1:
        lab[:3][lab[:3] > 0] = label_values[1]
    write_nifti(lab_path, lab, spacing=(1.5, 1.5, 3.0))


def panseg_tree(root: Path, folder="t1", centers=("AHN", "MCF"), n=2, nested=False) -> dict:
    """PanSegData layout: <folder>/imagesTr/<C>_<NNNN>_0000.nii.gz (+ labelsTr); returns the name mapping
    {original name: case id}; cases 1 and 2 of a center are one participant."""
    base = root / folder / (f"{folder}/train" if nested else "")
    mapping = {}
    for ci, center in enumerate(centers):
        for k in range(1, n + 1):
            case = f"{center}_{k:04d}"
            case_pair(base / "imagesTr" / f"{case}_0000.nii.gz", base / "labelsTr" / f"{case}.nii.gz", seed=ci * 10 + k)
            mapping[f"{center}-P{min(k, 2)}-V{k}"] = f"{case}_0000.nii.gz"
    mapping["left-out-scan"] = "Not included"
    return mapping


def zip_folder(root: Path, extra: dict | None = None) -> bytes:
    """Zip every file below `root` (paths relative to it), plus raw `extra` entries {name: bytes}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(root).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def decathlon_tree(root: Path, numbers=(1, 4, 7), task="Task07_Pancreas", junk=True, tumour=True) -> Path:
    """Decathlon layout: imagesTr/pancreas_XXX.nii.gz + labelsTr (labels 1 and 2), imagesTs, dataset.json,
    and the macOS ._ files the real tar carries."""
    base = root / task
    for i, num in enumerate(numbers):
        name = f"pancreas_{num:03d}.nii.gz"
        case_pair(base / "imagesTr" / name, base / "labelsTr" / name, seed=i, label_values=(1, 2) if tumour else (1,))
        if junk:
            (base / "imagesTr" / f"._{name}").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    write_nifti(base / "imagesTs" / "pancreas_999.nii.gz", np.zeros(SHAPE, np.float32))
    (base / "dataset.json").write_text(json.dumps({"name": "Pancreas", "labels": {"0": "background", "1": "pancreas",
                                                                                  "2": "cancer"}}))
    return base


def tar_folder(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for f in sorted(root.rglob("*")):
            tf.add(f, f.relative_to(root).as_posix(), recursive=False)
    return buf.getvalue()


def study_server(tmp_path, **kw) -> tuple[FakeOSF, dict]:
    """An OSF node shaped like PanSegData: t1.zip (2 centers x 2 cases), t2.zip (nested layout),
    name mappings in "Meta informations" (with its space), LICENSE.txt and an xlsx not selected."""
    server = FakeOSF(**kw)
    t1 = panseg_tree(tmp_path / "build_t1", "t1")
    t2 = panseg_tree(tmp_path / "build_t2", "t2", centers=("NYU",), nested=True)
    server.add("/Pancreas_MRI_Dataset/t1.zip", zip_folder(tmp_path / "build_t1"))
    server.add("/Pancreas_MRI_Dataset/t2.zip", zip_folder(tmp_path / "build_t2"))
    server.add("/Meta informations/T1-name_mapping.json", json.dumps(t1).encode())
    server.add("/Meta informations/T2-name_mapping.json", json.dumps(t2).encode())
    server.add("/Meta informations/t2_info_osf.xlsx", b"not selected")
    server.add("/LICENSE.txt", b"CC BY-NC 4.0 (test copy)\n")
    return server, {"T1": t1, "T2": t2}


@pytest.fixture
def osf_study(tmp_path):
    server, mappings = study_server(tmp_path)
    server.start()
    yield server, mappings
    server.stop()


def osf_settings(server, **kw) -> dict:
    return {"api_url": server.api, "node": server.node, "retries": 3, "backoff_s": 0.01, "timeout_s": 5,
            "progress_s": 0.01, **kw}
