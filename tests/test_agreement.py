"""Cohen's kappa from confusion counts against sklearn and a hand example; regions; the command."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from conftest import blob, write_nifti
from workflow_scripts.evaluation.agreement import (agreement_table, confusion_counts, dilated_union_box, kappa_from_counts, main,
                                        pooled_kappa, rater_agreement)
from workflow_scripts.common.errors import InputError


def test_kappa_hand_2x2_example():
    # 50 items: both yes 20, only rater A yes 5, only rater B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 x 0.6 + 0.5 x 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    assert kappa_from_counts(20, 5, 10, 15) == pytest.approx(0.4)
    assert kappa_from_counts(10, 0, 0, 40) == pytest.approx(1.0)
    assert np.isnan(kappa_from_counts(0, 0, 0, 100))  # p_e = 1: undefined
    assert np.isnan(kappa_from_counts(0, 0, 0, 0))


@pytest.mark.parametrize("seed", range(4))
def test_kappa_equals_sklearn(seed):
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(seed)
    a = ndimage.binary_dilation(rng.random((12, 20, 20)) > 0.97, iterations=2)
    b = a ^ (rng.random(a.shape) > 0.9)
    counts = confusion_counts(a, b)
    assert sum(counts) == a.size
    assert kappa_from_counts(*counts) == pytest.approx(cohen_kappa_score(a.ravel(), b.ravel()), abs=1e-12)


def test_dilated_union_box_and_regions():
    a = np.zeros((20, 40, 40), bool)
    a[8:12, 10:20, 10:20] = True
    b = np.roll(a, 2, axis=2)
    box = dilated_union_box(a, b, spacing=(5.0, 1.0, 1.0), margin_mm=10)
    # z: margin 10 mm / 5 mm = 2 slices; y, x: 10 voxels (clipped at 0)
    assert box == (slice(6, 14), slice(0, 30), slice(0, 32))
    r = rater_agreement(a, b, (5.0, 1.0, 1.0), margin_mm=10)
    assert r["dice"] == pytest.approx(0.8)
    # The whole volume holds more agreeing background: kappa is higher there than in the box.
    assert r["kappa_box"] < r["kappa_volume"] < 1
    assert r["n11_volume"] == r["n11_box"] and r["n00_volume"] > r["n00_box"]
    assert r["vol_a_ml"] == pytest.approx(400 * 5 / 1000)
    same = rater_agreement(a, a, (1, 1, 1))
    assert same["kappa_volume"] == same["kappa_box"] == same["dice"] == 1.0
    # A margin of 0 is the union's own box.
    assert dilated_union_box(a, b, (1, 1, 1), 0) == (slice(8, 12), slice(10, 20), slice(10, 22))


def test_pooled_kappa_sums_counts():
    df = pd.DataFrame([dict(n11_box=20, n10_box=5, n01_box=0, n00_box=0),
                       dict(n11_box=0, n10_box=0, n01_box=10, n00_box=15)])
    assert pooled_kappa(df, "box") == pytest.approx(0.4)


def manifest_rows(tmp_path, with_extra=True):
    rows = []
    for k, shift in enumerate((0, 1, 2), 1):
        case = f"AAA_{k:04d}"
        label = write_nifti(tmp_path / "labels" / f"{case}.nii.gz", blob(), spacing=(1.5, 1.5, 3.0))
        r2 = rep = ""
        if with_extra and k < 3:
            r2 = str(write_nifti(tmp_path / "rater2" / f"{case}.nii.gz", np.roll(blob(), shift, axis=2),
                                 spacing=(1.5, 1.5, 3.0)))
        if with_extra and k == 1:
            rep = str(write_nifti(tmp_path / "repeat" / f"{case}.nii.gz", blob(), spacing=(1.5, 1.5, 3.0)))
        rows.append(dict(case_id=case, modality="T1", center="AAA", participant_id=case, label=str(label),
                         data_source="synthetic", label_rater2=r2, label_repeat=rep))
    return pd.DataFrame(rows)


def test_agreement_table_rows(tmp_path):
    df = agreement_table(manifest_rows(tmp_path), margin_mm=1)
    assert sorted(zip(df.case, df.kind)) == [("AAA_0001", "inter"), ("AAA_0001", "intra"), ("AAA_0002", "inter")]
    intra = df[df.kind == "intra"].iloc[0]
    assert intra.dice == 1.0 and intra.kappa_volume == 1.0
    inter = df[(df.kind == "inter") & (df.case == "AAA_0002")].iloc[0]
    assert 0 < inter.kappa_box < inter.kappa_volume < 1 and inter.box_margin_mm == 1
    assert agreement_table(manifest_rows(tmp_path / "none", with_extra=False)).empty


def test_agreement_grid_mismatch_names_file(tmp_path):
    rows = manifest_rows(tmp_path)
    bad = write_nifti(tmp_path / "bad.nii.gz", np.zeros((8, 12, 10), np.uint8), spacing=(1.5, 1.5, 3.0))
    rows.loc[1, "label_rater2"] = str(bad)
    with pytest.raises(InputError, match="size") as err:
        agreement_table(rows)
    assert str(bad) in str(err.value)
    values = write_nifti(tmp_path / "values.nii.gz", blob() * 3, spacing=(1.5, 1.5, 3.0))
    rows.loc[1, "label_rater2"] = str(values)
    with pytest.raises(InputError, match="0/1"):
        agreement_table(rows)


def test_agreement_command_and_old_manifest(tmp_path):
    rows = manifest_rows(tmp_path)
    table = tmp_path / "AAA.tsv"
    rows.to_csv(table, sep="\t", index=False)
    out = tmp_path / "agreement.tsv"
    assert main(["--cases", str(table), "--margin-mm", "10", "--out", str(out)]) == 0
    assert len(pd.read_csv(out, sep="\t")) == 3
    rows.drop(columns=["label_rater2", "label_repeat"]).to_csv(table, sep="\t", index=False)  # before the columns
    assert main(["--cases", str(table), "--out", str(out)]) == 0
    empty = pd.read_csv(out, sep="\t")
    assert empty.empty and "kappa_box" in empty.columns
