"""url and local sources: Decathlon / nnU-Net raw / PanSegData layouts into the PanSegData raw layout."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import write_nifti
from fake_osf import StaticServer
from source_data import SHAPE, case_pair, decathlon_tree, panseg_tree, tar_folder
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.prepare import load_participants, prepare_center
from workflow_scripts.data.sources import local, url
from workflow_scripts.data.sources.download import DownloadError

TAR = "/Task07_Pancreas.tar"


def labels(folder):
    return {p.name: set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p)))).tolist())
            for p in sorted(folder.glob("*.nii.gz"))}


@pytest.fixture
def msd_server(tmp_path):
    decathlon_tree(tmp_path / "build")
    server = StaticServer()
    server.add(TAR, tar_folder(tmp_path / "build"))
    server.start()
    yield server
    server.stop()


def msd_settings(server, **kw):
    data = server.files[TAR]
    return {"url": server.url(TAR), "md5": hashlib.md5(data).hexdigest(), "size": len(data), "layout": "auto",
            "center": "MSD", "foreground_labels": [1, 2], "retries": 2, "backoff_s": 0.01, "timeout_s": 5,
            "filename": "Task07_Pancreas.tar", **kw}


def test_url_decathlon_tar_is_imported_with_labels_merged(msd_server, tmp_path):
    out = tmp_path / "raw" / "msd"
    summary = url.fetch(msd_settings(msd_server), out, tmp_path / "dl")
    assert summary["layout"] == "decathlon" and summary["cases"] == 3
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "MSD_0001_0000.nii.gz", "MSD_0004_0000.nii.gz", "MSD_0007_0000.nii.gz"]  # ._ files and imagesTs left out
    assert labels(out / "labelsTr") == {f"MSD_000{n}.nii.gz": {0, 1} for n in (1, 4, 7)}  # 1 and 2 -> 1
    assert json.loads((out / "name_mapping.json").read_text(encoding="utf-8"))["pancreas_004"] == "MSD_0004"
    assert not (tmp_path / "raw" / ".staging-msd").exists()
    # the merged label keeps the image's geometry and its voxels: prepare accepts the pair
    df, _ = prepare_center(out, "CT", "MSD", "train-cv", tmp_path / "p" / "MSD.tsv", tmp_path / "fixed",
                           mapping_file=out / "name_mapping.json", data_source="msd")
    assert df.participant_id.tolist() == ["pancreas_001", "pancreas_004", "pancreas_007"]
    # a second run downloads nothing
    shutil.rmtree(out)
    url.fetch(msd_settings(msd_server), out, tmp_path / "dl")
    assert len(msd_server.downloads()) == 1


def test_url_wrong_md5_refused(msd_server, tmp_path):
    with pytest.raises(DownloadError, match="md5"):
        url.fetch(msd_settings(msd_server, md5="0" * 32), tmp_path / "raw" / "msd", tmp_path / "dl")
    assert not (tmp_path / "raw" / "msd").exists() and not list((tmp_path / "dl").iterdir())


def test_url_placeholder_checksum_names_the_problem(msd_server, tmp_path):
    with pytest.raises(InputError, match="is not a sha256 checksum"):
        url.fetch(msd_settings(msd_server, md5=None, sha256="FILL-ME-IN"), tmp_path / "raw" / "msd", tmp_path / "dl")
    assert msd_server.downloads() == []


def prepare(out, tmp_path, center, **kw):
    return prepare_center(out, "CT", center, "train-cv", tmp_path / "p" / f"{center}.tsv", tmp_path / "fixed",
                          mapping_file=out / "name_mapping.json", data_source="test", **kw)


def test_unexpected_label_value_names_the_user_file(tmp_path):
    """A label that cannot be merged does not stop the import: prepare applies on_bad_case to it."""
    base = decathlon_tree(tmp_path / "src", numbers=(1, 2), junk=False)
    bad = base / "labelsTr" / "pancreas_002.nii.gz"
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(bad)))
    lab[0, 0, 0] = 3
    write_nifti(bad, lab, spacing=(1.5, 1.5, 3.0))
    out = tmp_path / "out"
    summary = local.fetch({"path": str(tmp_path / "src"), "center": "MSD", "foreground_labels": [1, 2]}, out)
    assert summary["cases"] == 1 and summary["not_imported"] == 1
    with pytest.raises(InputError, match=rf"{bad}: label cannot be merged: label values \[3\]"):
        prepare(out, tmp_path, "MSD")
    df, excluded = prepare(out, tmp_path, "MSD", on_bad_case="exclude")
    assert df.case_id.tolist() == ["MSD_0001"]
    assert excluded[["case_id", "file"]].values.tolist() == [["MSD_0002", str(bad)]]


def test_local_decathlon_layout_drops_duplicates(tmp_path):
    """NIH Pancreas-CT after DICOM conversion: PANCREAS_0001.. in Decathlon layout; 25 and 70 dropped."""
    src = tmp_path / "nih"
    for n in (1, 2, 25, 70):
        name = f"PANCREAS_{n:04d}.nii.gz"
        case_pair(src / "imagesTr" / name, src / "labelsTr" / name, seed=n)
    summary = local.fetch({"path": str(src), "layout": "decathlon", "center": "NIH", "drop_cases": [25, 70]},
                          tmp_path / "raw" / "nih")
    out = tmp_path / "raw" / "nih"
    assert summary["dropped"] == ["PANCREAS_0025", "PANCREAS_0070"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["NIH_0001.nii.gz", "NIH_0002.nii.gz"]
    image = out / "imagesTr" / "NIH_0001_0000.nii.gz"
    assert image.is_symlink() and image.resolve() == (src / "imagesTr" / "PANCREAS_0001.nii.gz").resolve()
    assert sorted(p.name for p in src.rglob("*.nii.gz")) == sorted(  # the user's folder is untouched
        [f"PANCREAS_{n:04d}.nii.gz" for n in (1, 2, 25, 70)] * 2)


def test_local_nnunet_raw_layout_is_renamed(tmp_path):
    src = tmp_path / "Dataset042_Pancreas"
    for name in ("case_a", "case_b"):
        case_pair(src / "imagesTr" / f"{name}_0000.nii.gz", src / "labelsTr" / f"{name}.nii.gz")
    (src / "dataset.json").write_text("{}")
    summary = local.fetch({"path": str(src), "center": "ABC", "mode": "copy"}, tmp_path / "raw" / "abc")
    out = tmp_path / "raw" / "abc"
    assert summary["layout"] == "nnunet"
    assert json.loads((out / "name_mapping.json").read_text(encoding="utf-8")) == {"case_a": "ABC_0001", "case_b": "ABC_0002"}
    assert not (out / "imagesTr" / "ABC_0001_0000.nii.gz").is_symlink()  # mode: copy
    df, _ = prepare_center(out, "CT", "ABC", "external", tmp_path / "p" / "ABC.tsv", tmp_path / "fixed",
                           mapping_file=out / "name_mapping.json", data_source="abc")
    assert len(df) == 2


def test_local_second_channel_is_refused(tmp_path):
    src = tmp_path / "src"
    case_pair(src / "imagesTr" / "x_001_0000.nii.gz", src / "labelsTr" / "x_001.nii.gz")
    case_pair(src / "imagesTr" / "x_002_0000.nii.gz", src / "labelsTr" / "x_002.nii.gz")
    write_nifti(src / "imagesTr" / "x_001_0001.nii.gz", np.zeros(SHAPE, np.float32))
    local.fetch({"path": str(src), "layout": "nnunet", "center": "ABC"}, tmp_path / "out")
    with pytest.raises(InputError, match="x_001_0001.nii.gz: image channel 0001: only single-channel"):
        prepare(tmp_path / "out", tmp_path, "ABC")
    df, excluded = prepare(tmp_path / "out", tmp_path, "ABC", on_bad_case="exclude")
    assert df.case_id.tolist() == ["ABC_0002"]  # the two-channel case is left out as a whole
    assert sorted(excluded.file) == sorted(str(src / d / f) for d, f in [
        ("imagesTr", "x_001_0000.nii.gz"), ("imagesTr", "x_001_0001.nii.gz"), ("labelsTr", "x_001.nii.gz")])


def test_local_panseg_layout_is_mirrored_with_archives_extracted(tmp_path):
    src = tmp_path / "PanSegData"
    mapping = panseg_tree(src, "t1")
    (src / "Meta informations").mkdir()
    (src / "Meta informations" / "T1-name_mapping.json").write_text(json.dumps(mapping))
    panseg_tree(tmp_path / "t2build", "t2", centers=("NYU",))
    shutil.make_archive(str(src / "t2"), "zip", tmp_path / "t2build")
    summary = local.fetch({"path": str(src)}, tmp_path / "raw" / "mri")
    out = tmp_path / "raw" / "mri"
    assert summary["layout"] == "panseg" and summary["archives_extracted"] == 1
    assert (out / "t1" / "imagesTr" / "MCF_0002_0000.nii.gz").is_symlink()
    assert (out / "t2" / "t2" / "labelsTr" / "NYU_0001.nii.gz").exists()
    df, _ = prepare_center(out / "t1", "T1", "MCF", "train-cv", tmp_path / "p" / "MCF.tsv", tmp_path / "fixed",
                           mapping_file=out / "Meta informations" / "T1-name_mapping.json",
                           participant_regex=r"^(?P<participant>[A-Z]+-P\d+)-V\d+$", data_source="local")
    assert df.participant_id.tolist() == ["MCF-P1", "MCF-P2"]


def test_local_missing_folder_names_the_key(tmp_path):
    with pytest.raises(InputError, match="set sources.nih.path"):
        local.fetch({"path": str(tmp_path / "nowhere")}, tmp_path / "out", name="nih")


def test_nnunet_layout_needs_a_center(tmp_path):
    src = tmp_path / "src"
    case_pair(src / "imagesTr" / "x_001_0000.nii.gz", src / "labelsTr" / "x_001.nii.gz")
    with pytest.raises(InputError, match="1 cases follow the nnunet layout .* set the source's `center`"):
        local.fetch({"path": str(src)}, tmp_path / "out")


@pytest.mark.parametrize("reverse", [False, True])
def test_name_mapping_in_either_direction(tmp_path, reverse):
    """The released files' direction could not be checked: {original: id} and {id: original} both work."""
    mapping = {"AHN-P7-V1": "AHN_0001_0000.nii.gz", "AHN-P7-V2": "AHN_0002", "dropped": "Not included"}
    if reverse:
        mapping = {"AHN_0001": "AHN-P7-V1", "AHN_0002.nii.gz": "AHN-P7-V2"}
    path = tmp_path / "T1-name_mapping.json"
    path.write_text(json.dumps(mapping))
    assert load_participants(path, r"^(?P<participant>[A-Z]+-P\d+)-V\d+$") == {"AHN_0001": "AHN-P7", "AHN_0002": "AHN-P7"}


def test_errors_name_the_archive_member(tmp_path):
    """A damaged label inside the downloaded tar: the message names the archive and its member."""
    build = tmp_path / "build"
    base = decathlon_tree(build)
    lab = base / "labelsTr" / "pancreas_004.nii.gz"
    lab.write_bytes(lab.read_bytes()[:-9])
    server = StaticServer()
    server.add(TAR, tar_folder(build))
    server.start()
    try:
        out = tmp_path / "raw" / "msd"
        url.fetch(msd_settings(server), out, tmp_path / "dl")
    finally:
        server.stop()
    member = f"{tmp_path / 'dl' / 'Task07_Pancreas.tar'} member Task07_Pancreas/labelsTr/pancreas_004.nii.gz"
    with pytest.raises(InputError, match="truncated") as err:
        prepare(out, tmp_path, "MSD")
    assert member in str(err.value)
    image_member = "Task07_Pancreas.tar member Task07_Pancreas/imagesTr/pancreas_001.nii.gz"
    assert image_member in (out / "origins.tsv").read_text(encoding="utf-8")
