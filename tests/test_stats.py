"""Statistics against textbook values and independent computations; per-setting comparisons on fabricated tables."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from workflow_scripts.evaluation import stats
from workflow_scripts.common.errors import InputError
from workflow_scripts.evaluation.stats import (Options, _agreement_from_sums, bland_altman, compare, comparison_specs,
                                    failure_table, holm, icc_a1, icc_pingouin, mcnemar_exact, paired_tests,
                                    proportional_bias, read_metrics, regression_limits, volume_agreement, volume_table)

# Student's sleep data (Cushny & Peebles 1905), extra hours of sleep with two drugs, the same 10
# patients. R: t.test(extra ~ group, data = sleep, paired = TRUE) gives t = -4.0621, df = 9,
# p-value = 0.002833, 95 % CI -2.4598858 -0.7001142, mean difference -1.58.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
MODELS = ["pansegnet", "unet2d", "axunet"]


def test_paired_tests_student_sleep_data():
    r = paired_tests(SLEEP_1, SLEEP_2)
    assert r["n_pairs"] == 10 and r["df"] == 9
    assert r["mean_diff"] == pytest.approx(-1.58)
    assert r["t"] == pytest.approx(-4.0621, abs=1e-4)
    assert r["p_t"] == pytest.approx(0.002833, abs=1e-6)
    assert r["t_ci_low"] == pytest.approx(-2.4598858, abs=1e-6)
    assert r["t_ci_high"] == pytest.approx(-0.7001142, abs=1e-6)
    d = np.subtract(SLEEP_1, SLEEP_2)
    assert r["d_z"] == pytest.approx(d.mean() / d.std(ddof=1)) and r["d_z"] == pytest.approx(-1.2845, abs=1e-4)
    # Wilcoxon by hand: 9 non-zero differences (the zero is dropped), all negative, so W = 0. Under the null
    # every sign pattern of the 9 ranks is equally likely: P(W = 0) = 1/2^9, two-sided p = 2/512 (exact).
    assert r["w"] == 0.0
    assert r["p_wilcoxon"] == pytest.approx(2 / 2**9, rel=1e-12)
    assert r["note"] == ""


def test_paired_tests_degenerate_and_min_pairs():
    assert np.isnan(paired_tests([0.5], [0.4])["p_t"])
    few = paired_tests([0.5, 0.6, 0.2, 0.9], [0.4, 0.7, 0.1, 0.5], min_pairs=5)
    assert np.isnan(few["p_t"]) and np.isnan(few["p_wilcoxon"]) and "fewer than min_pairs (5)" in few["note"]
    assert few["mean_diff"] == pytest.approx(0.125)  # the estimate stays
    assert not np.isnan(paired_tests([0.5, 0.6, 0.2, 0.9], [0.4, 0.7, 0.1, 0.5], min_pairs=4)["p_t"])
    same = paired_tests([0.5, 0.6, 0.7, 0.8, 0.9], [0.4, 0.5, 0.6, 0.7, 0.8])  # every difference 0.1
    assert np.isnan(same["p_t"]) and "zero variance" in same["note"] and same["mean_diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="length"):
        paired_tests([1, 2], [1, 2, 3])


def test_holm_known_vectors():
    # Holm (1979) step-down: sorted p_(i) x (m - i + 1), made monotone, capped at 1.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") = 0.05 0.08 0.09 0.09 0.09
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    out = holm([0.01, np.nan, 0.04])  # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([]).size == 0


def test_mcnemar_exact_is_the_binomial_test():
    # 1 scan failed only with the model, 7 only with the reference: 2 x P(X <= 1 | 8, 1/2) = 2 x 9/256.
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert np.isnan(mcnemar_exact(0, 0))


def test_icc_shrout_fleiss_example():
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; published ICC(2,1) = .29. From their mean
    # squares (BMS 11.24, JMS 32.49, EMS 1.02, n 6, k 4): (11.24 - 1.02) / (11.24 + 3*1.02 + 4*(32.49 - 1.02)/6).
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    icc = icc_a1(ratings)
    assert round(icc, 2) == 0.29
    assert icc == pytest.approx(10.22 / (11.24 + 3 * 1.02 + 4 * 31.47 / 6), abs=5e-4)


def test_vectorised_agreement_equals_pingouin_and_scipy():
    rng = np.random.default_rng(4)
    ref = rng.uniform(30, 100, 25)
    pred = 0.9 * ref + 4 + rng.normal(0, 6, 25)
    cols = np.column_stack([np.ones(25), pred, ref, pred**2, ref**2, pred * ref])
    s = _agreement_from_sums(cols.sum(0))
    assert s["icc"] == pytest.approx(icc_pingouin(pred, ref), rel=1e-10)
    assert s["r2"] == pytest.approx(sstats.pearsonr(pred, ref)[0] ** 2, rel=1e-10)
    ba = bland_altman(pred, ref)
    assert s["bias"] == pytest.approx(ba["bias"]) and s["sd"] == pytest.approx(ba["sd"])
    assert s["loa_high"] == pytest.approx(ba["loa_high"])
    # A resample holding one scan several times: no variance, so r² and ICC are undefined, never outside [0, 1].
    one = np.tile(cols[:1] * [1, 1, 1, 1, 1, 1], (3, 1)) + [0, 1e-13, 0, 0, 0, 0]
    flat = _agreement_from_sums(one.sum(0))
    assert np.isnan(flat["r2"]) and np.isnan(flat["icc"])


def test_bland_altman_hand_computed():
    # d = pred - ref = [-1, 1, 1, 3]: mean 1, sample sd sqrt(8/3) = 1.632993
    ba = bland_altman([10, 12, 14, 17], [11, 11, 13, 14])
    sd = np.sqrt(8 / 3)
    assert ba["bias"] == pytest.approx(1.0) and ba["sd"] == pytest.approx(sd)
    assert ba["loa_low"] == pytest.approx(-2.200666, abs=1e-6) and ba["loa_high"] == pytest.approx(4.200666, abs=1e-6)


def test_proportional_bias_and_regression_based_limits():
    rng = np.random.default_rng(1)
    ref = rng.uniform(20, 120, 60)
    pred = ref * 1.25 + rng.normal(0, 1 + 0.05 * ref)  # the difference grows with the size
    pb = proportional_bias(pred, ref)
    a, d = (pred + ref) / 2, pred - ref
    b1, b0 = np.polyfit(a, d, 1)
    assert pb["prop_bias_slope"] == pytest.approx(b1) and pb["prop_bias_intercept"] == pytest.approx(b0)
    assert pb["prop_bias_p"] < 1e-6
    c1, c0 = np.polyfit(a, np.abs(d - (b0 + b1 * a)), 1)
    assert pb["rb_sd_c0"] == pytest.approx(c0) and pb["rb_sd_c1"] == pytest.approx(c1)
    line, low, high = regression_limits(pb, [50.0])
    assert line[0] == pytest.approx(b0 + b1 * 50)
    assert high[0] - line[0] == pytest.approx(1.96 * np.sqrt(np.pi / 2) * (c0 + c1 * 50))
    flat = proportional_bias(ref + rng.normal(0, 2, 60), ref)
    assert flat["prop_bias_p"] > 0.05 and np.isnan(flat["rb_bias_b0"])  # no proportional bias: no such limits


def fabricated(models=MODELS, n_per_center=6, seed=0, loco_models=(), extra=()):
    """Per-case rows of several models on the same scans (known offsets). Participants 1-2 and 3-4 of a
    center have two scans each. `extra` adds (model, setting) rows on every scan (released, prompted)."""
    rng = np.random.default_rng(seed)
    offsets = {"pansegnet": 0.0, "unet2d": -0.08, "axunet": -0.01, "nnunet": 0.0}
    rows = []
    for center, setting in (("AHN", "cv"), ("MCF", "cv"), ("NYU", "external")):
        for k in range(1, n_per_center + 1):
            case = f"{center}_{k:04d}"
            participant = f"{center}-P{(k + 1) // 2 if k <= 4 else k}"
            base, vref = rng.uniform(0.7, 0.9), rng.uniform(40, 90)
            entries = [(m, setting) for m in models]
            entries += [(m, "loco") for m in loco_models if setting == "cv"]
            entries += list(extra)
            for model, s in entries:
                dice = float(np.clip(base + offsets.get(model, -0.03) - 0.04 * (s == "loco") + rng.normal(0, 0.02),
                                     0, 1))
                rows.append(dict(case=case, modality="T1", model=model, setting=s,
                                 n_folds=5 if s in ("cv", "external") else np.nan, center=center,
                                 participant_id=participant, role="train-cv" if setting == "cv" else "external",
                                 data_source="synthetic", dice=dice, nsd=float(min(1.0, dice + 0.05)),
                                 hd95_mm=float(20 * (1 - dice) + rng.uniform(0, 1)), hd_max_mm=30.0, assd_mm=2.0,
                                 precision=dice, recall=dice, vol_pred_ml=vref * (1 + rng.normal(0, 0.05)),
                                 vol_ref_ml=vref, vol_diff_ml=0.0, tp=1, fp=0, fn=0, empty=""))
    df = pd.DataFrame(rows)
    df["vol_diff_ml"] = df.vol_pred_ml - df.vol_ref_ml
    return df


def opts(**kw):
    return Options(reference="pansegnet", models=MODELS, n_boot=kw.pop("n_boot", 300), **kw)


def test_participant_unit_and_scan_sensitivity():
    df = fabricated()
    within, across = compare(df.sample(frac=1, random_state=1), opts())  # row order must not matter
    assert across.empty and set(within.setting) == {"cv", "external"}
    r = within[(within.setting == "cv") & (within.scope == "all") & (within.model == "unet2d")
               & (within.metric == "dice")].set_index("unit")
    # cv: AHN and MCF, 6 scans each, 4 participants each (P1, P2 with two scans; P5, P6 with one).
    assert r.loc["participant", "n_pairs"] == 8 and r.loc["participant", "n_scans"] == 12
    assert r.loc["scan", "n_pairs"] == 12 and r.loc["scan", "n_participants"] == 8
    assert bool(r.loc["participant", "primary"]) and not bool(r.loc["scan", "primary"])
    cv = df[df.setting == "cv"]
    means = cv.groupby(["participant_id", "model"]).dice.mean().unstack()
    expected = sstats.ttest_rel(means.unet2d, means.pansegnet)
    assert r.loc["participant", "t"] == pytest.approx(expected.statistic)
    assert r.loc["participant", "p_t"] == pytest.approx(expected.pvalue)
    assert r.loc["participant", "mean_diff"] == pytest.approx((means.unet2d - means.pansegnet).mean())
    assert r.loc["participant", "p_wilcoxon"] == pytest.approx(sstats.wilcoxon(means.unet2d - means.pansegnet).pvalue)
    scans = cv.pivot(index="case", columns="model", values="dice")
    assert r.loc["scan", "p_t"] == pytest.approx(sstats.ttest_rel(scans.unet2d, scans.pansegnet).pvalue)
    for unit in ("participant", "scan"):
        assert r.loc[unit, "ci_low"] < r.loc[unit, "mean_diff"] < r.loc[unit, "ci_high"] < 0


def test_families_holm_and_min_pairs():
    within, _ = compare(fabricated(), opts())
    assert set(within.family) == {f"T1/{s}/{u}/{k}" for s in ("cv", "external") for u in ("participant", "scan")
                                  for k in ("all centers", "per center")}
    for family, g in within.groupby("family"):
        assert g.p_t_holm.to_numpy() == pytest.approx(holm(g.p_t.to_numpy()), nan_ok=True)
        assert g.p_wilcoxon_holm.to_numpy() == pytest.approx(holm(g.p_wilcoxon.to_numpy()), nan_ok=True)
    # One center: 4 participants < min_pairs 5: no p, the note says why; its 6 scans are enough.
    ahn = within[(within.scope == "AHN") & (within.metric == "dice") & (within.model == "unet2d")].set_index("unit")
    assert np.isnan(ahn.loc["participant", "p_t"]) and "fewer than min_pairs (5)" in ahn.loc["participant", "note"]
    assert not np.isnan(ahn.loc["scan", "p_t"])
    assert (within.reference == "pansegnet").all() and "pansegnet" not in set(within.model)


def test_hd95_tests_leave_out_failures():
    df = fabricated()
    hit = (df.model == "unet2d") & (df.case == "AHN_0005")
    df.loc[hit, ["dice", "nsd", "empty"]] = [0.0, 0.0, "pred"]
    df.loc[hit, "hd95_mm"] = 250.0  # the image diagonal
    both = (df.model == "pansegnet") & (df.case == "MCF_0006")
    df.loc[both, ["hd95_mm", "nsd", "empty"]] = [np.nan, np.nan, "both"]
    within, _ = compare(df, opts())
    r = within[(within.setting == "cv") & (within.scope == "all") & (within.model == "unet2d")
               & (within.unit == "scan")].set_index("metric")
    assert r.loc["hd95_mm", "n_scans"] == 10 and r.loc["hd95_mm", "n_excluded"] == 2
    assert r.loc["hd95_mm", "n_excluded_failed"] == 1 and r.loc["hd95_mm", "n_excluded_undefined"] == 1
    assert "failed prediction" in r.loc["hd95_mm", "note"]
    assert r.loc["dice", "n_scans"] == 12 and r.loc["dice", "n_excluded"] == 0  # Dice keeps the failure (0)
    assert r.loc["nsd", "n_scans"] == 11 and r.loc["nsd", "n_excluded_undefined"] == 1  # both empty: no NSD
    fails = failure_table(df, opts())
    f = fails[(fails.setting == "cv") & (fails.scope == "all") & (fails.model == "unet2d")].iloc[0]
    assert (f.failures_model, f.failures_reference, f.model_only, f.reference_only) == (1, 0, 1, 0)
    assert f.p_mcnemar == pytest.approx(1.0) and f.rate_diff == pytest.approx(1 / 12)
    # statistics.failure_dice: a Dice below it is a failure too.
    low = failure_table(df, opts(failure_dice=0.75))
    assert low[(low.setting == "cv") & (low.scope == "all") & (low.model == "unet2d")].failures_model.iloc[0] > 1


def test_a_model_that_always_fails():
    """Every prediction of one model empty: no HD95 pairs (said), McNemar significant, no crash anywhere."""
    df = fabricated()
    df.loc[df.model == "unet2d", ["dice", "nsd", "empty"]] = [0.0, 0.0, "pred"]
    out = stats.run_all(df, opts(n_boot=50))
    c = out["comparisons"]
    hd = c[(c.model == "unet2d") & (c.metric == "hd95_mm") & (c.scope == "all")]
    assert (hd.n_pairs == 0).all() and hd.note.str.contains("12 pairs with a failed prediction|6 pairs with").all()
    f = out["failures"][(out["failures"].model == "unet2d") & (out["failures"].scope == "all")].set_index("setting")
    assert f.loc["cv", "p_mcnemar"] == pytest.approx(2 / 2**12)  # 12 discordant scans, all one way
    mixed = out["mixed_model"]
    assert mixed[mixed.metric == "hd95_mm"].note.str.contains("without a failed prediction").all()


def test_released_and_prompted_models_get_paired_comparisons():
    extra = [("released_v1", "released"), ("sam", "prompted"), ("medsam", "prompted")]
    df = fabricated(loco_models=("pansegnet",), extra=extra)
    o = opts()
    specs = comparison_specs(df, o)
    assert ("within", "prompted", "sam", "prompted", "medsam") in specs  # first (sorted) prompted model is the reference
    assert ("across", "loco", "pansegnet", "cv", "pansegnet") in specs
    for model, setting in [("released_v1", "released"), ("sam", "prompted"), ("medsam", "prompted")]:
        for rs in ("cv", "external"):
            assert ("across", setting, model, rs, "pansegnet") in specs
    assert not any(s[0] == "within" and s[1] == "released" for s in specs)  # one released model: nothing within
    within, across = compare(df, o)
    r = across[(across.setting == "released") & (across.reference_setting == "cv") & (across.scope == "all")
               & (across.unit == "scan") & (across.metric == "dice")].iloc[0]
    assert r.n_pairs == 12 and r.reference == "pansegnet"  # the reference model's cv scans only
    assert r.family == "T1/released vs cv/scan/all centers"
    loco = across[(across.setting == "loco") & (across.scope == "all") & (across.metric == "dice")]
    assert (loco.mean_diff < 0).all() and set(loco.family) == {"T1/loco vs cv/participant/all centers",
                                                                 "T1/loco vs cv/scan/all centers"}
    for family, g in across.groupby("family"):
        assert g.p_t_holm.to_numpy() == pytest.approx(holm(g.p_t.to_numpy()), nan_ok=True)
    vol = volume_table(df, o)
    assert {("released", "released_v1"), ("prompted", "sam"), ("loco", "pansegnet")} <= set(zip(vol.setting, vol.model))


def test_volume_agreement_with_intervals():
    df = fabricated()
    g = df[(df.setting == "cv") & (df.model == "axunet")]
    va = volume_agreement(g, opts(n_boot=1000))
    assert va["n_scans"] == 12 and va["n_participants"] == 8
    assert va["icc"] == pytest.approx(icc_pingouin(g.vol_pred_ml, g.vol_ref_ml))
    assert va["r2_pearson"] == pytest.approx(sstats.pearsonr(g.vol_pred_ml, g.vol_ref_ml)[0] ** 2)
    for key in ("icc", "bias", "loa_low", "loa_high"):
        col = f"{key}_ml" if key in ("bias", "loa_low", "loa_high") else key
        assert va[f"{key}_ci_low"] <= va[col] <= va[f"{key}_ci_high"], key
    assert va["r2_ci_low"] <= va["r2_pearson"] <= va["r2_ci_high"]
    assert va["p_t"] == pytest.approx(sstats.ttest_rel(g.vol_pred_ml, g.vol_ref_ml).pvalue)


def test_read_metrics_migrates_old_settings_and_names_bad_files(tmp_path):
    df = fabricated(models=("pansegnet",), loco_models=("pansegnet",)).drop(columns="n_folds")
    df["setting"] = df.setting.map({"cv": "5-fold-cv", "external": "external", "loco": "held-out-center"})
    p = tmp_path / "old.tsv"
    df.to_csv(p, sep="\t", index=False)
    got = read_metrics([p])
    assert set(got.setting) == {"cv", "external", "loco"}
    assert (got[got.setting == "cv"].n_folds == 5).all() and got[got.setting != "cv"].n_folds.isna().all()
    bad = tmp_path / "bad.tsv"
    df.assign(setting="someday").to_csv(bad, sep="\t", index=False)
    with pytest.raises(InputError, match="unknown setting") as err:
        read_metrics([bad])
    assert str(bad) in str(err.value)
    nonsd = tmp_path / "nonsd.tsv"
    df.drop(columns="nsd").to_csv(nonsd, sep="\t", index=False)
    with pytest.raises(InputError, match="re-run its evaluate job"):
        read_metrics([nonsd])
    with pytest.raises(InputError, match="appears twice"):
        read_metrics([p, p])


def write_per_model(df, tmp_path):
    paths = []
    for (model, setting), g in df.groupby(["model", "setting"]):
        p = tmp_path / f"{model}_{setting}.tsv"
        g.to_csv(p, sep="\t", index=False)
        paths.append(str(p))
    return paths


def test_stats_command_is_deterministic(tmp_path):
    paths = write_per_model(fabricated(loco_models=("pansegnet",)), tmp_path)
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert stats.main(["--metrics", *(paths[::-1] if run == "b" else paths), "--reference", "pansegnet",
                           "--models", *MODELS, "--n-boot", "200", "--out-dir", str(out)]) == 0
        outputs.append({name: (out / f"{name}.tsv").read_bytes() for name in stats.OUTPUTS})
    assert outputs[0] == outputs[1]  # byte-identical for the same inputs and seed
    comp = pd.read_csv(tmp_path / "a" / "comparisons.tsv", sep="\t")
    assert set(stats.COMPARISON_COLUMNS) <= set(comp.columns)
    assert len(comp) == 2 * 2 * 3 * (3 + 2)  # 2 models x 2 units x 3 metrics x (cv: all + 2 centers; external: all + 1)
    mixed = pd.read_csv(tmp_path / "a" / "mixed_model.tsv", sep="\t")
    assert set(mixed.setting) == {"cv", "external"} and mixed.converged.all()
    assert (mixed[mixed.setting == "external"].note.str.contains("not estimable")).all()


def test_single_model_gives_empty_comparisons():
    within, across = compare(fabricated(models=("nnunet",)), opts())
    assert within.empty and across.empty and "p_t_holm" in within.columns


def test_ungrouped_participants_are_flagged():
    df = fabricated()
    assert stats.ungrouped(df) == []
    assert "not grouped in T1" in stats.ungrouped_warning(df.assign(participant_id=df.case))
