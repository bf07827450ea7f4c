"""Statistics against textbook values: paired t-test, Holm, Bland-Altman, r² vs identity-line R²."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from workflow_scripts.stats import (bland_altman, compare_models, holm, paired_ttest, read_metrics, volume_agreement,
                                    volume_table)
from workflow_scripts.errors import InputError

# Student's sleep data (Cushny & Peebles 1905), extra hours of sleep with two drugs, the same 10
# patients. R: t.test(extra ~ group, data = sleep, paired = TRUE) gives t = -4.0621, df = 9,
# p-value = 0.002833, 95 % CI -2.4598858 -0.7001142, mean difference -1.58.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_ttest_student_sleep_data():
    r = paired_ttest(SLEEP_1, SLEEP_2)
    assert r["n_pairs"] == 10 and r["df"] == 9
    assert r["mean_diff"] == pytest.approx(-1.58)
    assert r["t"] == pytest.approx(-4.0621, abs=1e-4)
    assert r["p"] == pytest.approx(0.002833, abs=1e-6)
    assert r["ci_low"] == pytest.approx(-2.4598858, abs=1e-6)
    assert r["ci_high"] == pytest.approx(-0.7001142, abs=1e-6)
    assert r["note"] == ""


def test_paired_ttest_degenerate_cases():
    assert np.isnan(paired_ttest([0.5], [0.4])["p"])
    assert "fewer than 2" in paired_ttest([0.5], [0.4])["note"]
    same = paired_ttest([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # every difference 0.1
    assert np.isnan(same["p"]) and "zero variance" in same["note"] and same["mean_diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="length"):
        paired_ttest([1, 2], [1, 2, 3])


def test_holm_known_vectors():
    # Holm (1979) step-down: sorted p_(i) x (m - i + 1), made monotone, capped at 1.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") = 0.05 0.08 0.09 0.09 0.09
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, np.nan, 0.04])  # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([]).size == 0


def test_bland_altman_hand_computed():
    # d = pred - ref = [-1, 1, 1, 3]: mean 1, sample sd sqrt(8/3) = 1.632993
    ba = bland_altman([10, 12, 14, 17], [11, 11, 13, 14])
    sd = np.sqrt(8 / 3)
    assert ba["bias"] == pytest.approx(1.0)
    assert ba["sd"] == pytest.approx(sd)
    assert ba["loa_low"] == pytest.approx(1 - 1.96 * sd) and ba["loa_low"] == pytest.approx(-2.200666, abs=1e-6)
    assert ba["loa_high"] == pytest.approx(4.200666, abs=1e-6)


def test_pearson_r2_vs_identity_r2_on_biased_predictions():
    from sklearn.metrics import r2_score

    ref = np.array([40.0, 50.0, 60.0, 70.0])
    biased = volume_agreement(ref + 10, ref)  # perfectly correlated, 10 mL too large
    assert biased["r2_pearson"] == pytest.approx(1.0)
    assert biased["slope"] == pytest.approx(1.0) and biased["intercept"] == pytest.approx(10.0)
    # SS_res = 4 x 100 = 400, SS_tot = 500 -> R² = 0.2
    assert biased["r2_identity"] == pytest.approx(0.2) == r2_score(ref, ref + 10)
    assert biased["bias_ml"] == pytest.approx(10.0) and biased["sd_diff_ml"] == pytest.approx(0.0)
    assert "zero variance" in biased["note"]
    scaled = volume_agreement(2 * ref, ref)
    assert scaled["r2_pearson"] == pytest.approx(1.0) and scaled["r2_identity"] < 0
    rng = np.random.default_rng(0)
    pred = ref + rng.normal(0, 5, size=4)
    va = volume_agreement(pred, ref)
    assert va["r2_pearson"] == pytest.approx(sstats.pearsonr(ref, pred)[0] ** 2)
    assert va["r2_identity"] == pytest.approx(r2_score(ref, pred))
    assert va["p"] == pytest.approx(sstats.ttest_rel(pred, ref).pvalue)


def fabricated(models=("pansegnet", "unet2d", "axunet"), n_per_center=6, seed=0):
    """Per-case tables for several models on the same cases: known offsets, one undefined HD95."""
    rng = np.random.default_rng(seed)
    rows = []
    offsets = {"pansegnet": 0.0, "unet2d": -0.08, "axunet": -0.01, "nnunet": 0.0}
    for center, role in (("AHN", "train-cv"), ("MCF", "train-cv"), ("NYU", "external")):
        for k in range(1, n_per_center + 1):
            case = f"{center}_{k:04d}"
            base = rng.uniform(0.7, 0.9)
            vref = rng.uniform(40, 90)
            for model in models:
                dice = float(np.clip(base + offsets[model] + rng.normal(0, 0.02), 0, 1))
                rows.append(dict(case=case, modality="T1", model=model, center=center, participant_id=case, role=role,
                                 data_source="synthetic", dice=dice, hd95_mm=float(20 * (1 - dice) + rng.uniform(0, 1)),
                                 hd_max_mm=30.0, assd_mm=2.0, precision=dice, recall=dice,
                                 vol_pred_ml=vref * (1 + rng.normal(0, 0.05)), vol_ref_ml=vref, vol_diff_ml=0.0, tp=1,
                                 fp=0, fn=0, empty=""))
    df = pd.DataFrame(rows)
    df["vol_diff_ml"] = df.vol_pred_ml - df.vol_ref_ml
    return df


def test_compare_models_pairs_by_case_and_corrects_per_table():
    df = fabricated()
    # unet2d misses one case; pansegnet has one case with both masks empty (HD95 undefined).
    df = df[~((df.model == "unet2d") & (df.case == "AHN_0001"))]
    df.loc[(df.model == "pansegnet") & (df.case == "MCF_0002"), ["hd95_mm", "empty"]] = [np.nan, "both"]
    comp = compare_models(df.sample(frac=1, random_state=1), "pansegnet")  # row order must not matter
    assert set(comp.model) == {"unet2d", "axunet"} and (comp.reference == "pansegnet").all()
    assert set(comp.family) == {"T1/all", "T1/centers"}
    assert len(comp[comp.scope == "all"]) == 4 and len(comp[comp.family == "T1/centers"]) == 3 * 2 * 2
    r = comp[(comp.scope == "all") & (comp.model == "unet2d") & (comp.metric == "hd95_mm")].iloc[0]
    assert r.n_pairs == 16 and r.n_undefined == 1 and r.n_reference_only == 1 and r.n_model_only == 0
    # The same numbers straight from scipy on the cases both have.
    a = df[df.model == "unet2d"].set_index("case").hd95_mm
    b = df[df.model == "pansegnet"].set_index("case").hd95_mm
    both = a.index.intersection(b.index)
    both = [c for c in both if pd.notna(a[c]) and pd.notna(b[c])]
    expected = sstats.ttest_rel(a[both], b[both])
    assert r.t == pytest.approx(expected.statistic) and r.p == pytest.approx(expected.pvalue)
    assert r.mean_diff == pytest.approx((a[both] - b[both]).mean())
    d = comp[(comp.scope == "all") & (comp.model == "unet2d") & (comp.metric == "dice")].iloc[0]
    assert d.mean_diff < -0.05 and d.p < 1e-6 and d.ci_low < d.mean_diff < d.ci_high < 0
    for family, g in comp.groupby("family"):
        assert g.p_holm.to_numpy() == pytest.approx(holm(g.p.to_numpy()), nan_ok=True)
        assert (g.p_holm >= g.p).all()
    assert set(comp[comp.family == "T1/centers"].role) == {"train-cv", "external"}


def test_single_model_gives_empty_comparisons():
    comp = compare_models(fabricated(models=("nnunet",)), "nnunet")
    assert comp.empty and "p_holm" in comp.columns


def test_missing_reference_is_an_error():
    with pytest.raises(ValueError, match="reference model 'pansegnet'"):
        compare_models(fabricated(models=("unet2d", "axunet")), "pansegnet")


def test_volume_table_per_model_with_holm():
    vt = volume_table(fabricated())
    assert list(vt.model) == ["axunet", "pansegnet", "unet2d"] and (vt.n == 18).all()
    assert (vt.r2_pearson > 0.8).all() and (vt.r2_identity <= vt.r2_pearson + 1e-9).all()
    assert vt.p_holm.to_numpy() == pytest.approx(holm(vt.p.to_numpy()))


def test_read_metrics_names_bad_file(tmp_path):
    bad = tmp_path / "metrics.tsv"
    bad.write_text("case\tdice\nA_1\t0.5\n")
    with pytest.raises(InputError, match="lacks columns") as err:
        read_metrics([bad])
    assert str(bad) in str(err.value)


def test_stats_command(tmp_path):
    from workflow_scripts import stats

    paths = []
    for model, g in fabricated().groupby("model"):
        p = tmp_path / f"{model}.tsv"
        g.to_csv(p, sep="\t", index=False)
        paths.append(str(p))
    out_c, out_v = tmp_path / "c.tsv", tmp_path / "v.tsv"
    assert stats.main(["--metrics", *paths, "--reference", "pansegnet", "--out-comparisons", str(out_c),
                       "--out-volume", str(out_v)]) == 0
    comp = pd.read_csv(out_c, sep="\t")
    assert len(comp) == 4 + 12 and pd.read_csv(out_v, sep="\t").shape[0] == 3
