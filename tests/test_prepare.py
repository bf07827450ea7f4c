"""prepare: discovery, participant mapping and every kind of bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import blob, write_nifti
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.prepare import find_dataset_dirs, load_participants, prepare_center

REGEX = r"^(?P<participant>[A-Z]+-P\d+)-V\d+-"


def run(raw, tmp_path, center="AAA", **kw):
    out = tmp_path / "prep" / f"{center}.tsv"
    return prepare_center(raw / "t1", "T1", center, "train-cv", out, tmp_path / "fixed",
                          mapping_file=raw / "T1-name_mapping.json", participant_regex=REGEX, data_source="test", **kw)


def test_good_center(raw_dataset, tmp_path):
    df, excluded = run(raw_dataset, tmp_path)
    assert list(df.case_id) == ["AAA_0001", "AAA_0002", "AAA_0003"]
    assert df.participant_id.tolist() == ["AAA-P1", "AAA-P2", "AAA-P2"]
    assert (df.role == "train-cv").all() and len(excluded) == 0
    written = pd.read_csv(tmp_path / "prep" / "AAA.tsv", sep="\t")
    assert len(written) == 3 and (tmp_path / "prep" / "AAA.excluded.tsv").exists()


def test_finds_nested_layout(raw_dataset, tmp_path):
    nested = tmp_path / "nested" / "t1" / "t1" / "train"
    nested.parent.mkdir(parents=True)
    (raw_dataset / "t1").rename(nested)
    images, labels = find_dataset_dirs(tmp_path / "nested")
    assert images == nested / "imagesTr" and labels == nested / "labelsTr"


def test_two_dataset_folders_are_ambiguous(raw_dataset, tmp_path):
    (raw_dataset / "t1" / "copy" / "imagesTr").mkdir(parents=True)
    (raw_dataset / "t1" / "copy" / "labelsTr").mkdir()
    with pytest.raises(InputError, match="several imagesTr"):
        find_dataset_dirs(raw_dataset / "t1")


def break_case(raw, kind):
    img = raw / "t1" / "imagesTr" / "AAA_0002_0000.nii.gz"
    lab = raw / "t1" / "labelsTr" / "AAA_0002.nii.gz"
    if kind == "missing_label":
        lab.unlink()
        return img, "has no label"
    if kind == "label_values":
        write_nifti(lab, blob() * 2, spacing=(1.5, 1.5, 3.0))
        return lab, "0/1"
    if kind == "nan":
        a = np.ones((8, 12, 12), np.float32)
        a[0, 0, 0] = np.nan
        write_nifti(img, a, spacing=(1.5, 1.5, 3.0))
        return img, "NaN"
    if kind == "size":
        write_nifti(lab, np.zeros((8, 12, 10), np.uint8), spacing=(1.5, 1.5, 3.0))
        return lab, "size"
    if kind == "spacing":
        write_nifti(lab, blob(), spacing=(1.0, 1.5, 3.0))
        return lab, "spacing"
    if kind == "unreadable":
        lab.write_bytes(b"not a nifti file")
        return lab, "cannot be read"
    if kind == "empty_label":
        write_nifti(lab, np.zeros((8, 12, 12), np.uint8), spacing=(1.5, 1.5, 3.0))
        return lab, "no foreground"
    if kind == "header":
        write_nifti(lab, blob(), spacing=(1.5, 1.5, 3.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
        return lab, "direction"
    raise ValueError(kind)


KINDS = ["missing_label", "label_values", "nan", "size", "spacing", "unreadable", "empty_label", "header"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_case_stops_naming_file(raw_dataset, tmp_path, kind):
    path, problem = break_case(raw_dataset, kind)
    with pytest.raises(InputError, match=problem) as err:
        run(raw_dataset, tmp_path)
    assert str(path) in str(err.value)
    assert not (tmp_path / "prep" / "AAA.tsv").exists(), "no partial output on failure"


@pytest.mark.parametrize("kind", KINDS[:-1])
def test_bad_case_excluded_with_reason(raw_dataset, tmp_path, kind):
    path, problem = break_case(raw_dataset, kind)
    df, excluded = run(raw_dataset, tmp_path, on_bad_case="exclude")
    assert "AAA_0002" not in set(df.case_id)
    assert excluded.case_id.tolist() == ["AAA_0002"] and problem in excluded.reason.iloc[0]
    on_disk = pd.read_csv(tmp_path / "prep" / "AAA.excluded.tsv", sep="\t")
    assert on_disk.file.tolist() == [str(path)]


def test_header_mismatch_fixed_with_image_geometry(raw_dataset, tmp_path):
    break_case(raw_dataset, "header")
    df, _ = run(raw_dataset, tmp_path, header_mismatch="use_image")
    row = df.set_index("case_id").loc["AAA_0002"]
    assert "direction" in row.notes and row.label.startswith(str(tmp_path / "fixed"))
    import SimpleITK as sitk

    assert sitk.ReadImage(row.label).GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_unmapped_case_keeps_own_id(raw_dataset, tmp_path):
    mapping = json.loads((raw_dataset / "T1-name_mapping.json").read_text(encoding="utf-8"))
    mapping = {k: v for k, v in mapping.items() if v != "AAA_0003"}
    (raw_dataset / "T1-name_mapping.json").write_text(json.dumps(mapping))
    df, _ = run(raw_dataset, tmp_path)
    assert df.set_index("case_id").participant_id["AAA_0003"] == "AAA_0003"


def test_mapping_errors(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_participants(bad, REGEX)
    bad.write_text(json.dumps({"weird name": "AAA_0001"}))
    with pytest.raises(InputError, match="participant_regex"):
        load_participants(bad, REGEX)
    with pytest.raises(InputError, match="does not exist"):
        load_participants(tmp_path / "none.json", REGEX)


def test_unknown_center_is_an_error(raw_dataset, tmp_path):
    with pytest.raises(InputError, match="no scans of center ZZZ"):
        run(raw_dataset, tmp_path, center="ZZZ")


def add_annotation(raw, folder, case, array, **kw):
    return write_nifti(raw / "t1" / folder / f"{case}.nii.gz", array, spacing=(1.5, 1.5, 3.0), **kw)


def test_extra_annotations_fill_optional_columns(raw_dataset, tmp_path):
    r2 = add_annotation(raw_dataset, "labelsTr_rater2", "AAA_0001", np.roll(blob(), 1, axis=2))
    rep = add_annotation(raw_dataset, "labelsTr_repeat", "AAA_0001", blob())
    r2b = add_annotation(raw_dataset, "labelsTr_rater2", "AAA_0003", blob())
    add_annotation(raw_dataset, "labelsTr_rater2", "BBB_0001", blob())  # another center: not this one's
    df, _ = run(raw_dataset, tmp_path)
    rows = df.set_index("case_id")
    assert rows.label_rater2.to_dict() == {"AAA_0001": str(r2), "AAA_0002": "", "AAA_0003": str(r2b)}
    assert rows.label_repeat.to_dict() == {"AAA_0001": str(rep), "AAA_0002": "", "AAA_0003": ""}
    written = pd.read_csv(tmp_path / "prep" / "AAA.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(written.columns[-2:]) == ["label_rater2", "label_repeat"]
    assert written.label_repeat.tolist() == [str(rep), "", ""]


def test_no_extra_annotations_gives_empty_columns(raw_dataset, tmp_path):
    df, _ = run(raw_dataset, tmp_path)
    assert (df.label_rater2 == "").all() and (df.label_repeat == "").all()


@pytest.mark.parametrize("kind, problem", [("values", "0/1"), ("size", "size"), ("empty", "no foreground")])
def test_bad_extra_annotation(raw_dataset, tmp_path, kind, problem):
    array = {"values": blob() * 2, "size": np.zeros((8, 12, 10), np.uint8), "empty": np.zeros((8, 12, 12), np.uint8)}
    bad = add_annotation(raw_dataset, "labelsTr_repeat", "AAA_0002", array[kind])
    with pytest.raises(InputError, match=problem) as err:
        run(raw_dataset, tmp_path)
    assert str(bad) in str(err.value)
    df, excluded = run(raw_dataset, tmp_path, on_bad_case="exclude")  # scan kept, annotation dropped
    row = df.set_index("case_id").loc["AAA_0002"]
    assert row.label_repeat == "" and "label_repeat dropped" in row.notes and len(excluded) == 0


def test_extra_annotation_header_fixed_like_labels(raw_dataset, tmp_path):
    add_annotation(raw_dataset, "labelsTr_rater2", "AAA_0001", blob(), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    df, _ = run(raw_dataset, tmp_path, header_mismatch="use_image")
    path = df.set_index("case_id").label_rater2["AAA_0001"]
    assert path == str(tmp_path / "fixed" / "labelsTr_rater2" / "AAA_0001.nii.gz")
    import SimpleITK as sitk

    assert sitk.ReadImage(path).GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_manifest_schema_accepts_optional_columns(raw_dataset, tmp_path):
    from workflow_scripts.data.manifest import build_manifest
    from helpers import REPO

    add_annotation(raw_dataset, "labelsTr_rater2", "AAA_0001", blob())
    run(raw_dataset, tmp_path)
    table = tmp_path / "prep" / "AAA.tsv"
    df, _ = build_manifest([table], REPO / "config" / "schemas" / "manifest.schema.yaml")
    assert df.label_rater2.tolist()[0].endswith("AAA_0001.nii.gz") and df.label_repeat.tolist() == ["", "", ""]
    bad = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    bad.loc[0, "label_repeat"] = "not-an-image.txt"
    bad.to_csv(table, sep="\t", index=False)
    with pytest.raises(InputError, match="label_repeat"):
        build_manifest([table], REPO / "config" / "schemas" / "manifest.schema.yaml")
