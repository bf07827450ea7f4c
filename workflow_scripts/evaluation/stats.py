"""Study statistics from per-case metrics, per modality and per setting (docs/results.md defines each).

Input: per-case metrics tables (one row per scan x model x setting, columns at least modality,
setting, model, case, participant_id, center, dice, nsd, hd95_mm, volumes and ``empty``). Works for
any number of models and for settings that only some models have (``released`` or ``prompted``
models have only those rows; the reference model keeps cv/external/loco).

What is compared (always on identical scans, never pooling settings):
- **within a setting**: every model against the reference model (``statistics.reference_model``;
  in a setting the reference model has no rows in, the first configured model of that setting);
- **across settings** (their own table and Holm family): ``loco`` vs ``cv`` of the same model;
  ``released`` and ``prompted`` models vs the reference model's ``cv`` and ``external`` rows of
  the same scans, so such a model always gets a paired comparison.

Unit: paired tests use participant means by default (``statistics.unit``), the scan-level result
beside it (``primary`` says which one the configuration chose). For a participant, the mean over
the scans both sides have. Per comparison: n pairs (units), n participants, n scans, n excluded;
mean difference (model - reference) with a 95 % stratified cluster bootstrap CI (participants
resampled within centers, bootstrap.py) and the t-based CI beside the t-test; Cohen's d_z = mean
/ sd of the paired differences; paired t-test (scipy ttest_rel) and Wilcoxon signed-rank test
(scipy wilcoxon) with Holm's correction (statsmodels multipletests), applied separately to the
t and the Wilcoxon p-values, within a family = modality x setting (or setting pair) x unit x scope
kind (all centers, or per center). Below ``statistics.min_pairs`` pairs a test gives no p-value
and the note says why.

Failures: a prediction fails when it is empty (and, with ``statistics.failure_dice`` set, when
its Dice is below it). HD95 is tested on pairs where neither prediction failed (the pairs left
out are counted); failures are compared per scan on identical scans with the exact McNemar test.

Outputs (one job per modality): comparisons.tsv (within settings), cross_setting.tsv (across),
failures.tsv (McNemar), volume.tsv (ICC, r², Bland-Altman with CIs, proportional bias),
descriptives.tsv (mean, sd and CI per setting x model x scope with n participants / n scans) and
mixed_model.tsv (mixed_model.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sstats

from workflow_scripts.common.atomic import write_table
from workflow_scripts.evaluation.bootstrap import ClusterBootstrap, cluster_mean_ci, mean_ci, percentile_ci
from workflow_scripts.common.errors import InputError
from workflow_scripts.evaluation.settings import SETTINGS, normalise_settings, order_settings

log = logging.getLogger(__name__)

COMPARED_METRICS = {"dice": "Dice", "nsd": "NSD", "hd95_mm": "HD95 (mm)"}
DISTANCE_METRICS = ("hd95_mm",)  # tested on pairs where neither prediction failed
DESCRIBED_METRICS = ("dice", "nsd", "hd95_mm", "precision", "recall")
UNITS = ("participant", "scan")
NEEDED = {"case", "modality", "model", "setting", "center", "participant_id", "dice", "nsd", "hd95_mm", "vol_pred_ml",
          "vol_ref_ml", "empty"}
COMPARISON_COLUMNS = [
    "modality", "setting", "reference_setting", "unit", "scope", "metric", "model", "reference", "primary", "n_pairs",
    "n_participants", "n_scans", "n_excluded", "n_excluded_failed", "n_excluded_undefined", "mean_model",
    "mean_reference", "mean_diff", "ci_low", "ci_high", "t_ci_low", "t_ci_high", "sd_diff", "d_z", "t", "df", "p_t",
    "p_t_holm", "w", "p_wilcoxon", "p_wilcoxon_holm", "family", "note"]
FAILURE_COLUMNS = [
    "modality", "setting", "reference_setting", "scope", "model", "reference", "n_scans", "n_participants",
    "failures_model", "failures_reference", "model_only", "reference_only", "rate_diff", "ci_low", "ci_high",
    "p_mcnemar", "p_mcnemar_holm", "family", "note"]
VOLUME_COLUMNS = [
    "modality", "setting", "model", "n_scans", "n_participants", "mean_pred_ml", "mean_ref_ml", "icc", "icc_ci_low",
    "icc_ci_high", "pearson_r", "r2_pearson", "r2_ci_low", "r2_ci_high", "slope", "intercept", "r2_identity",
    "bias_ml", "bias_ci_low", "bias_ci_high", "sd_diff_ml", "loa_low_ml", "loa_low_ci_low", "loa_low_ci_high",
    "loa_high_ml", "loa_high_ci_low", "loa_high_ci_high", "prop_bias_slope", "prop_bias_intercept", "prop_bias_p",
    "rb_bias_b0", "rb_bias_b1", "rb_sd_c0", "rb_sd_c1", "t", "df", "p_t", "p_t_holm", "p_wilcoxon",
    "p_wilcoxon_holm", "family", "note"]
UNGROUPED_WARNING = ("WARNING: participants are not grouped in {what}: every scan is its own participant (as with the "
                     "placeholder participant_regex), so scans of one person count as independent and the "
                     "participant unit equals the scan unit.")


@dataclass
class Options:
    reference: str
    models: list[str] = field(default_factory=list)  # configured order (reference first where present)
    unit: str = "participant"
    n_boot: int = 2000
    seed: int = 20240517
    failure_dice: float | None = None
    min_pairs: int = 5
    confidence: float = 0.95


# ---- basic tests ---------------------------------------------------------------------------
def paired_tests(x, y, min_pairs: int = 5, confidence: float = 0.95) -> dict:
    """Paired t-test (with its t-based CI) and Wilcoxon signed-rank test of x against y (difference x - y).

    Fewer than `min_pairs` pairs, or differences all equal, give no p-value and a note saying why.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {y.shape}")
    d = x - y
    n = int(d.size)
    sd = float(d.std(ddof=1)) if n > 1 else np.nan
    out = dict(n_pairs=n, mean_diff=float(d.mean()) if n else np.nan, sd_diff=sd,
               d_z=float(d.mean() / sd) if n > 1 and sd > 0 else np.nan, t_ci_low=np.nan, t_ci_high=np.nan,
               t=np.nan, df=np.nan, p_t=np.nan, w=np.nan, p_wilcoxon=np.nan, note="")
    if n < max(int(min_pairs), 2):
        out["note"] = f"{n} pairs, fewer than min_pairs ({min_pairs}): no test"
        return out
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # equal up to rounding (0.5 - 0.4 vs 0.6 - 0.5)
        out["note"] = "all differences equal: no test (zero variance)"
        return out
    res = sstats.ttest_rel(x, y)
    ci = res.confidence_interval(confidence)
    out.update(t=float(res.statistic), df=float(res.df), p_t=float(res.pvalue), t_ci_low=float(ci.low),
               t_ci_high=float(ci.high))
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about ties/zeros and switches to the normal approximation
            w = sstats.wilcoxon(d)
        out.update(w=float(w.statistic), p_wilcoxon=float(w.pvalue))
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels); NaN p-values stay NaN and do not count as tests."""
    from unittest import mock

    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        # statsmodels' Holm branch calls gc.collect() on every call (~0.1 s once pandas and statsmodels
        # are loaded), which would dominate the hundreds of families of a study: skip that call only.
        with mock.patch("gc.collect", return_value=0):
            out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def add_holm(df: pd.DataFrame, pairs) -> pd.DataFrame:
    """Holm within each `family`, for each (p column, adjusted column) pair separately."""
    for p_col, out_col in pairs:
        df[out_col] = np.nan
        for _, idx in df.groupby("family", sort=False).groups.items():
            df.loc[idx, out_col] = holm(df.loc[idx, p_col].to_numpy(float))
    return df


def failed(rows: pd.DataFrame, failure_dice: float | None = None) -> pd.Series:
    """A failed prediction: empty (reference not), or Dice below `failure_dice` when that is set."""
    out = rows["empty"].astype(str) == "pred"
    if failure_dice is not None:
        out |= rows["dice"].astype(float) < float(failure_dice)
    return out


def ungrouped(per_case: pd.DataFrame) -> list[str]:
    """Modalities whose participants are not grouped (every scan its own participant)."""
    out = []
    for modality, g in per_case.groupby("modality", sort=True):
        scans = g.drop_duplicates("case")
        if len(scans) > 1 and scans.participant_id.nunique() == len(scans):
            out.append(str(modality))
    return out


def ungrouped_warning(per_case: pd.DataFrame) -> str:
    mods = ungrouped(per_case)
    return UNGROUPED_WARNING.format(what=", ".join(mods)) if mods else ""


# ---- pairing ---------------------------------------------------------------------------------
def pair_rows(a: pd.DataFrame, b: pd.DataFrame, failure_dice=None) -> pd.DataFrame:
    """Identical scans of two sets of rows: one row per case with <metric>_m (a) and <metric>_r (b)."""
    cols = ["case", "participant_id", "center"] + list(COMPARED_METRICS)
    left = a[cols].assign(failed=failed(a, failure_dice).to_numpy())
    right = b[["case"] + list(COMPARED_METRICS)].assign(failed=failed(b, failure_dice).to_numpy())
    return left.merge(right, on="case", how="inner", suffixes=("_m", "_r")).sort_values("case", kind="stable")


def _unit_values(boot: ClusterBootstrap, x, y, unit):
    """Values entering the test: per scan, or per participant (mean over the participant's scans, boot.ids order)."""
    if unit == "scan":
        return np.asarray(x, float), np.asarray(y, float)
    s = boot.cluster_sums(np.column_stack([x, y, np.ones(len(x))]))
    return s[:, 0] / s[:, 2], s[:, 1] / s[:, 2]


def _compare_one(pairs: pd.DataFrame, metric: str, unit: str, opts: Options) -> dict:
    x, y = pairs[f"{metric}_m"].astype(float), pairs[f"{metric}_r"].astype(float)
    undefined = x.isna() | y.isna()
    fail = (pairs.failed_m | pairs.failed_r) & ~undefined if metric in DISTANCE_METRICS else pd.Series(False,
                                                                                                      index=x.index)
    valid = ~undefined & ~fail
    sub = pairs[valid]
    boot = ClusterBootstrap(sub.participant_id.to_numpy(), sub.center.to_numpy(), opts.n_boot, opts.seed)
    xv, yv = x[valid].to_numpy(), y[valid].to_numpy()
    ux, uy = _unit_values(boot, xv, yv, unit)
    test = paired_tests(ux, uy, opts.min_pairs, opts.confidence)
    if unit == "scan":
        ci = mean_ci(boot, xv - yv, opts.confidence)
    else:
        ci = cluster_mean_ci(boot, ux - uy, opts.confidence)
    notes = [n for n in [test.pop("note")] if n]
    if fail.any():
        notes.append(f"{int(fail.sum())} pairs with a failed prediction left out")
    if undefined.any():
        notes.append(f"{int(undefined.sum())} pairs with an undefined {COMPARED_METRICS[metric]} left out")
    return dict(n_participants=boot.n_clusters, n_scans=int(valid.sum()), n_excluded=int((~valid).sum()),
                n_excluded_failed=int(fail.sum()), n_excluded_undefined=int(undefined.sum()),
                mean_model=float(np.mean(ux)) if len(ux) else np.nan,
                mean_reference=float(np.mean(uy)) if len(uy) else np.nan, ci_low=ci[0], ci_high=ci[1], **test,
                note="; ".join(notes))


def comparison_specs(per_case: pd.DataFrame, opts: Options) -> list[tuple[str, str, str, str, str]]:
    """(kind, setting, model, reference_setting, reference_model) of every comparison of one modality."""
    has = {(s, m) for s, m in per_case[["setting", "model"]].drop_duplicates().itertuples(index=False)}
    order = [m for m in opts.models if m in set(per_case.model)] + sorted(set(per_case.model) - set(opts.models))
    specs = []
    for s in order_settings(per_case.setting):
        models = [m for m in order if (s, m) in has]
        ref = opts.reference if opts.reference in models else (models[0] if models else None)
        specs += [("within", s, m, s, ref) for m in models if m != ref]
    for m in order:
        if ("loco", m) in has and ("cv", m) in has:
            specs.append(("across", "loco", m, "cv", m))
    for s in ("released", "prompted"):
        for m in order:
            if (s, m) not in has:
                continue
            for rs in ("cv", "external"):
                if (rs, opts.reference) in has and m != opts.reference:
                    specs.append(("across", s, m, rs, opts.reference))
    return specs


def _family(modality, setting, ref_setting, unit, scope, suffix=None) -> str:
    kind = "all centers" if scope == "all" else "per center"
    pair = setting if setting == ref_setting else f"{setting} vs {ref_setting}"
    return "/".join(str(p) for p in (modality, pair, suffix or unit, kind))


def compare(per_case: pd.DataFrame, opts: Options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(within-setting comparisons, cross-setting comparisons), Holm-adjusted within their families."""
    within, across = [], []
    for modality, g in per_case.groupby("modality", sort=True):
        for kind, s, m, rs, ref in comparison_specs(g, opts):
            a = g[(g.setting == s) & (g.model == m)]
            b = g[(g.setting == rs) & (g.model == ref)]
            pairs = pair_rows(a, b, opts.failure_dice)
            scopes = [("all", pairs)] + [(c, pc) for c, pc in pairs.groupby("center", sort=True)]
            for unit in UNITS:
                for scope, ps in scopes:
                    for metric in COMPARED_METRICS:
                        row = dict(modality=modality, setting=s, reference_setting=rs, unit=unit, scope=scope,
                                   metric=metric, model=m, reference=ref, primary=unit == opts.unit,
                                   family=_family(modality, s, rs, unit, scope), **_compare_one(ps, metric, unit, opts))
                        (within if kind == "within" else across).append(row)
    out = []
    for rows in (within, across):
        df = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
        out.append(add_holm(df, [("p_t", "p_t_holm"), ("p_wilcoxon", "p_wilcoxon_holm")]))
    return out[0], out[1]


# ---- failures ------------------------------------------------------------------------------
def mcnemar_exact(model_only: int, reference_only: int) -> float:
    """Exact McNemar test (statsmodels; binomial on the discordant scans); NaN without discordant scans."""
    from statsmodels.stats.contingency_tables import mcnemar

    if model_only + reference_only == 0:
        return np.nan
    return float(mcnemar([[0, model_only], [reference_only, 0]], exact=True).pvalue)


def failure_table(per_case: pd.DataFrame, opts: Options) -> pd.DataFrame:
    """Failures per scan on identical scans, every comparison of compare(), all centers and per center."""
    rows = []
    for modality, g in per_case.groupby("modality", sort=True):
        for kind, s, m, rs, ref in comparison_specs(g, opts):
            pairs = pair_rows(g[(g.setting == s) & (g.model == m)], g[(g.setting == rs) & (g.model == ref)],
                              opts.failure_dice)
            for scope, ps in [("all", pairs)] + [(c, pc) for c, pc in pairs.groupby("center", sort=True)]:
                fm, fr = ps.failed_m.to_numpy(bool), ps.failed_r.to_numpy(bool)
                boot = ClusterBootstrap(ps.participant_id.to_numpy(), ps.center.to_numpy(), opts.n_boot, opts.seed)
                b, c = int((fm & ~fr).sum()), int((~fm & fr).sum())
                p = mcnemar_exact(b, c)
                lo, hi = mean_ci(boot, fm.astype(float) - fr.astype(float), opts.confidence)
                rows.append(dict(modality=modality, setting=s, reference_setting=rs, scope=scope, model=m,
                                 reference=ref, n_scans=len(ps), n_participants=boot.n_clusters,
                                 failures_model=int(fm.sum()), failures_reference=int(fr.sum()), model_only=b,
                                 reference_only=c, rate_diff=float(fm.mean() - fr.mean()) if len(ps) else np.nan,
                                 ci_low=lo, ci_high=hi, p_mcnemar=p,
                                 family=_family(modality, s, rs, "scan", scope, "failures"),
                                 note="" if b + c else "no discordant scans: no test"))
    df = pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    return add_holm(df, [("p_mcnemar", "p_mcnemar_holm")])


# ---- descriptives --------------------------------------------------------------------------
def describe(rows: pd.DataFrame, opts: Options) -> dict:
    """n scans / participants / centers, mean, sd (ddof=1) and cluster-bootstrap CI of the scan mean per metric."""
    fail = failed(rows, opts.failure_dice)
    out = dict(n_scans=len(rows), n_participants=int(rows.participant_id.nunique()),
               n_centers=int(rows.center.nunique()), n_failures=int(fail.sum()),
               n_hd95_undefined=int(rows.hd95_mm.isna().sum()), n_nsd_undefined=int(rows.nsd.isna().sum()))
    columns = {m: rows[m].astype(float) for m in DESCRIBED_METRICS}
    columns["hd95_nonfailed"] = rows.hd95_mm.astype(float).where(~fail)
    for name, v in columns.items():
        ok = v.notna().to_numpy()
        vals = v.to_numpy()[ok]
        boot = ClusterBootstrap(rows.participant_id.to_numpy()[ok], rows.center.to_numpy()[ok], opts.n_boot,
                                opts.seed)
        lo, hi = mean_ci(boot, vals, opts.confidence)
        out.update({f"{name}_mean": float(vals.mean()) if vals.size else np.nan,
                    f"{name}_sd": float(vals.std(ddof=1)) if vals.size > 1 else np.nan,
                    f"{name}_ci_low": lo, f"{name}_ci_high": hi})
    return out


def descriptives(per_case: pd.DataFrame, opts: Options) -> pd.DataFrame:
    """One row per modality x setting x model x scope (all centers, each center)."""
    rows = []
    for (modality, setting, model), g in per_case.groupby(["modality", "setting", "model"], sort=True):
        for scope, gs in [("all", g)] + [(c, gc) for c, gc in g.groupby("center", sort=True)]:
            folds = pd.to_numeric(gs.get("n_folds", pd.Series(dtype=float)), errors="coerce").dropna().unique()
            rows.append(dict(modality=modality, setting=setting, model=model, scope=scope,
                             n_folds=float(folds[0]) if len(folds) == 1 else np.nan,
                             data_source=",".join(sorted(set(gs.get("data_source", pd.Series([""])).astype(str)))),
                             **describe(gs, opts)))
    df = pd.DataFrame(rows)
    if len(df):
        df["_s"] = df.setting.map({s: i for i, s in enumerate(SETTINGS)})
        df = df.sort_values(["modality", "_s", "model", "scope"], kind="stable").drop(columns="_s")
    return df.reset_index(drop=True)


# ---- volume agreement ----------------------------------------------------------------------
def _agreement_from_sums(s: np.ndarray) -> dict:
    """Vectorised statistics from column sums [n, Σa, Σb, Σa², Σb², Σab] (a = predicted, b = reference).

    ICC(A,1) (two-way, absolute agreement, single measure; McGraw & Wong 1996, Shrout & Fleiss ICC(2,1))
    from the two-way ANOVA mean squares with k = 2 raters; Pearson r²; Bland-Altman bias, sd (ddof=1)
    and limits bias ± 1.96 sd.
    """
    n, sa, sb, saa, sbb, sab = (s[..., i] for i in range(6))
    with np.errstate(divide="ignore", invalid="ignore"):
        grand = (sa + sb) / (2 * n)
        sst = saa + sbb - 2 * n * grand**2
        ssr = 0.5 * (saa + sbb + 2 * sab) - 2 * n * grand**2  # k Σ (row mean - grand)²
        ssc = n * ((sa / n - grand) ** 2 + (sb / n - grand) ** 2)
        sse = sst - ssr - ssc
        msr, msc, mse = ssr / (n - 1), ssc, sse / (n - 1)
        icc = (msr - mse) / (msr + mse + 2 * (msc - mse) / n)
        cov = sab - sa * sb / n
        # Centred sums of squares from raw sums cancel badly when a resample holds (nearly) one value:
        # below a relative 1e-10 the variance counts as zero and r², ICC are undefined (NaN), never garbage.
        va, vb = saa - sa**2 / n, sbb - sb**2 / n
        flat = (va <= 1e-10 * saa) | (vb <= 1e-10 * sbb)
        r2 = np.where(flat, np.nan, cov**2 / np.where(flat, 1.0, va * vb))
        icc = np.where(flat, np.nan, icc)
        bias = (sa - sb) / n
        sdd = np.sqrt(np.maximum((saa + sbb - 2 * sab) - n * bias**2, 0) / (n - 1))
    return dict(icc=icc, r2=r2, bias=bias, sd=sdd, loa_low=bias - 1.96 * sdd, loa_high=bias + 1.96 * sdd)


def icc_a1(ratings) -> float:
    """ICC(A,1) (two-way, absolute agreement, single measure) of an (n targets x k raters) matrix, with pingouin."""
    import pingouin as pg

    m = np.asarray(ratings, float)
    n, k = m.shape
    data = pd.DataFrame({"target": np.repeat(np.arange(n), k), "rater": np.tile(np.arange(k), n), "value": m.ravel()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pingouin's own pandas deprecation warnings
        res = pg.intraclass_corr(data=data, targets="target", raters="rater", ratings="value")
    return float(res.set_index("Type").loc["ICC(A,1)", "ICC"])  # pingouin >= 0.7 names it ICC(A,1) (was ICC2)


def icc_pingouin(pred, ref) -> float:
    """ICC(A,1) of predicted vs reference volume (the two measurements as raters)."""
    return icc_a1(np.column_stack([np.asarray(pred, float), np.asarray(ref, float)]))


def bland_altman(pred, ref) -> dict:
    """Bias and 95 % limits of agreement of pred - ref (sample sd, ddof=1)."""
    d = np.asarray(pred, float) - np.asarray(ref, float)
    bias = float(d.mean()) if d.size else np.nan
    sd = float(d.std(ddof=1)) if d.size > 1 else np.nan
    return dict(bias=bias, sd=sd, loa_low=bias - 1.96 * sd, loa_high=bias + 1.96 * sd)


def proportional_bias(pred, ref) -> dict:
    """Bland & Altman (1999): regress d = pred - ref on the mean A; when the slope is significant (p < 0.05),
    regression-based limits b0 + b1·A ± 1.96·√(π/2)·(c0 + c1·A), with |residual| regressed on A."""
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    d, a = pred - ref, (pred + ref) / 2
    out = dict(prop_bias_slope=np.nan, prop_bias_intercept=np.nan, prop_bias_p=np.nan, rb_bias_b0=np.nan,
               rb_bias_b1=np.nan, rb_sd_c0=np.nan, rb_sd_c1=np.nan)
    if d.size < 3 or np.ptp(a) == 0:
        return out
    fit = sstats.linregress(a, d)
    out.update(prop_bias_slope=float(fit.slope), prop_bias_intercept=float(fit.intercept), prop_bias_p=float(fit.pvalue))
    if fit.pvalue < 0.05:
        resid = np.abs(d - (fit.intercept + fit.slope * a))
        sd_fit = sstats.linregress(a, resid)
        out.update(rb_bias_b0=float(fit.intercept), rb_bias_b1=float(fit.slope), rb_sd_c0=float(sd_fit.intercept),
                   rb_sd_c1=float(sd_fit.slope))
    return out


def regression_limits(row, mean_values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bias line, lower, upper limit) at the given means from the rb_* columns of a volume row."""
    a = np.asarray(mean_values, float)
    bias = row["rb_bias_b0"] + row["rb_bias_b1"] * a
    half = 1.96 * np.sqrt(np.pi / 2) * (row["rb_sd_c0"] + row["rb_sd_c1"] * a)
    return bias, bias - half, bias + half


def volume_agreement(rows: pd.DataFrame, opts: Options) -> dict:
    """Predicted vs reference volume of one setting x model (scans), with cluster-bootstrap CIs."""
    from sklearn.metrics import r2_score

    pred, ref = rows.vol_pred_ml.to_numpy(float), rows.vol_ref_ml.to_numpy(float)
    n = pred.size
    out = dict(n_scans=int(n), n_participants=int(rows.participant_id.nunique()),
               mean_pred_ml=float(pred.mean()) if n else np.nan, mean_ref_ml=float(ref.mean()) if n else np.nan)
    notes = []
    cols = np.column_stack([np.ones(n), pred, ref, pred**2, ref**2, pred * ref])
    point = _agreement_from_sums(cols.sum(0))
    if n >= 2 and np.ptp(ref) > 0 and np.ptp(pred) > 0:
        fit = sstats.linregress(ref, pred)
        out.update(pearson_r=float(fit.rvalue), r2_pearson=float(fit.rvalue) ** 2, slope=float(fit.slope),
                   intercept=float(fit.intercept), r2_identity=float(r2_score(ref, pred)), icc=icc_pingouin(pred, ref))
    else:
        out.update(pearson_r=np.nan, r2_pearson=np.nan, slope=np.nan, intercept=np.nan, r2_identity=np.nan,
                   icc=float(point["icc"]) if n >= 2 else np.nan)
        notes.append("fewer than 2 scans or constant volumes: no correlation")
    ba = bland_altman(pred, ref)
    out.update(bias_ml=ba["bias"], sd_diff_ml=ba["sd"], loa_low_ml=ba["loa_low"], loa_high_ml=ba["loa_high"])
    boot = ClusterBootstrap(rows.participant_id.to_numpy(), rows.center.to_numpy(), opts.n_boot, opts.seed)
    if opts.n_boot and boot.n_clusters >= 2:
        bs = _agreement_from_sums(boot.resampled_sums(cols))
        for key, name in (("icc", "icc"), ("r2", "r2"), ("bias", "bias"), ("loa_low", "loa_low"),
                          ("loa_high", "loa_high")):
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = percentile_ci(bs[key], opts.confidence)
    else:
        for name in ("icc", "r2", "bias", "loa_low", "loa_high"):
            out[f"{name}_ci_low"] = out[f"{name}_ci_high"] = np.nan
    out.update(proportional_bias(pred, ref))
    test = paired_tests(pred, ref, opts.min_pairs, opts.confidence)
    out.update(t=test["t"], df=test["df"], p_t=test["p_t"], p_wilcoxon=test["p_wilcoxon"])
    if test["note"]:
        notes.append(test["note"])
    out["note"] = "; ".join(notes)
    return out


def volume_table(per_case: pd.DataFrame, opts: Options) -> pd.DataFrame:
    """Volume agreement per modality x setting x model; Holm across the models of a modality x setting."""
    rows = []
    for (modality, setting, model), g in per_case.groupby(["modality", "setting", "model"], sort=True):
        rows.append(dict(modality=modality, setting=setting, model=model, family=f"{modality}/{setting}/volume",
                         **volume_agreement(g, opts)))
    df = pd.DataFrame(rows, columns=VOLUME_COLUMNS)
    if len(df):
        df["_s"] = df.setting.map({s: i for i, s in enumerate(SETTINGS)})
        df = df.sort_values(["modality", "_s", "model"], kind="stable").drop(columns="_s").reset_index(drop=True)
    return add_holm(df, [("p_t", "p_t_holm"), ("p_wilcoxon", "p_wilcoxon_holm")])


# ---- input ---------------------------------------------------------------------------------
def read_metrics(paths) -> pd.DataFrame:
    """Concatenate per-case metrics tables (old setting values migrated); a bad table names the file."""
    frames = []
    for path in paths:
        try:
            df = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["", "nan", "NaN"],
                             dtype={"case": str, "empty": str, "participant_id": str, "center": str, "model": str,
                                    "modality": str, "setting": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise InputError(path, f"cannot be read as a metrics table ({exc})") from None
        missing = NEEDED - set(df.columns)
        if missing:
            hint = " (written before NSD and the setting column: re-run its evaluate job)" if missing & {
                "nsd", "setting"} else ""
            raise InputError(path, f"metrics table lacks columns {sorted(missing)}{hint}")
        df["empty"] = df["empty"].fillna("")
        if df.participant_id.isna().any():
            raise InputError(path, "participant_id is empty in some rows")
        frames.append(normalise_settings(df, path))
    if not frames:
        raise InputError("--metrics", "no metrics tables given")
    out = pd.concat(frames, ignore_index=True)
    dup = out.duplicated(["modality", "setting", "model", "case"])
    if dup.any():
        r = out[dup].iloc[0]
        raise InputError(paths[0], f"case {r.case} appears twice for {r.modality}/{r.setting}/{r.model} "
                                   "(the same metrics table given twice?)")
    return out


def run_all(per_case: pd.DataFrame, opts: Options) -> dict[str, pd.DataFrame]:
    """Every statistics table of the per-case rows (any modalities); timings are logged."""
    from workflow_scripts.evaluation.mixed_model import mixed_models

    t0 = time.perf_counter()
    within, across = compare(per_case, opts)
    out = dict(comparisons=within, cross_setting=across, failures=failure_table(per_case, opts),
               volume=volume_table(per_case, opts), descriptives=descriptives(per_case, opts))
    t1 = time.perf_counter()
    out["mixed_model"] = mixed_models(per_case, opts)
    t2 = time.perf_counter()
    out["timing"] = pd.DataFrame([dict(step="tests and bootstrap intervals", seconds=t1 - t0, n_boot=opts.n_boot),
                                  dict(step="mixed models", seconds=t2 - t1, n_boot=opts.n_boot)])
    return out


OUTPUTS = ("comparisons", "cross_setting", "failures", "volume", "descriptives", "mixed_model")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Study statistics of one modality (per setting; docs/results.md).")
    ap.add_argument("--metrics", nargs="+", required=True, help="per-case metrics tables (any models and settings)")
    ap.add_argument("--reference", required=True, help="reference model of the paired tests")
    ap.add_argument("--models", nargs="*", default=[], help="configured model order")
    ap.add_argument("--unit", choices=UNITS, default="participant", help="unit of the primary paired tests")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (0: no intervals)")
    ap.add_argument("--seed", type=int, default=20240517, help="bootstrap seed")
    ap.add_argument("--failure-dice", type=float, default=None, help="a Dice below this is a failure (default: off)")
    ap.add_argument("--min-pairs", type=int, default=5, help="fewer pairs give no p-value")
    ap.add_argument("--out-dir", required=True, help=f"writes {', '.join(o + '.tsv' for o in OUTPUTS)}")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        per_case = read_metrics(args.metrics)
    except InputError as exc:
        log.error("%s", exc)
        return 1
    opts = Options(reference=args.reference, models=list(args.models), unit=args.unit, n_boot=args.n_boot,
                   seed=args.seed, failure_dice=args.failure_dice, min_pairs=args.min_pairs)
    warning = ungrouped_warning(per_case)
    if warning:
        log.warning("%s", warning)
    tables = run_all(per_case, opts)
    from pathlib import Path

    for name in OUTPUTS:
        write_table(tables[name], Path(args.out_dir) / f"{name}.tsv", float_format="%.6g")
    for r in tables["timing"].itertuples():
        log.info("%s: %.2f s (n_boot %d)", r.step, r.seconds, r.n_boot)
    comp = tables["comparisons"]
    if comp.empty:
        log.info("settings %s x models %s: no within-setting comparison (one model per setting)",
                 order_settings(per_case.setting), sorted(set(per_case.model)))
    for r in comp[(comp.scope == "all") & comp.primary].itertuples():
        log.info("%s %s %s vs %s, %s (%s): n=%d diff %.4g [%.4g, %.4g] p_t=%.3g (Holm %.3g) p_W=%.3g %s", r.modality,
                 r.setting, r.model, r.reference, r.metric, r.unit, r.n_pairs, r.mean_diff, r.ci_low, r.ci_high, r.p_t,
                 r.p_t_holm, r.p_wilcoxon, r.note)
    for r in tables["mixed_model"].itertuples():
        log.info("mixed model %s %s %s: %s %+.4g [%.4g, %.4g] converged=%s %s", r.modality, r.setting, r.metric,
                 r.model, r.effect, r.ci_low, r.ci_high, r.converged, r.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
