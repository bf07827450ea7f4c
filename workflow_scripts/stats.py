"""Statistics on per-case metrics: paired model comparisons and volume agreement.

One job per modality (``python -m workflow_scripts.stats``) writes two tables:

``comparisons.tsv``  every model against the reference model, per metric (Dice, HD95), over all
    cases of the modality (scope ``all``) and per center. Cases are paired by case id; only
    cases both models have enter, and a case whose metric is undefined for either model (HD95 of
    a case with both masks empty) is left out and counted (``n_undefined``). Paired t-test with
    :func:`scipy.stats.ttest_rel`; the mean difference is model minus reference with its 95 %
    confidence interval. Holm's correction (:func:`statsmodels.stats.multitest.multipletests`) runs
    over the comparisons of one table: family ``<modality>/all`` (the modality table: every model
    x metric) and family ``<modality>/centers`` (the cross-center comparisons: every center x model
    x metric).
``volume.tsv``  per model: predicted against reference volume (mL). ``r2_pearson`` is the squared
    Pearson correlation (the paper's "R²"); ``slope`` and ``intercept`` of the least-squares line
    pred = slope x ref + intercept; ``r2_identity`` is the coefficient of determination against the
    identity line pred = ref (``sklearn.metrics.r2_score(ref, pred)``), which also penalises bias;
    Bland-Altman ``bias`` = mean(pred - ref) and limits of agreement bias ± 1.96 x sd (ddof=1);
    a paired t-test of predicted against reference volume, Holm-corrected across models
    (family ``<modality>/volume``).

With one model there is nothing to compare: the comparisons table is written with its header
only and the log (and the paper tables) say so.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import pandas as pd
from scipy import stats as sstats

from .atomic import write_table
from .errors import InputError

log = logging.getLogger(__name__)

COMPARED_METRICS = {"dice": "Dice", "hd95_mm": "HD95 (mm)"}
COMPARISON_COLUMNS = ["modality", "family", "scope", "role", "metric", "model", "reference", "n_pairs", "n_undefined",
                      "n_model_only", "n_reference_only", "mean_model", "mean_reference", "mean_diff", "ci_low",
                      "ci_high", "t", "df", "p", "p_holm", "note"]
VOLUME_COLUMNS = ["modality", "model", "scope", "n", "mean_pred_ml", "mean_ref_ml", "pearson_r", "r2_pearson", "slope",
                  "intercept", "r2_identity", "bias_ml", "sd_diff_ml", "loa_low_ml", "loa_high_ml", "t", "df", "p",
                  "family", "p_holm", "note"]
NEEDED = {"case", "modality", "model", "center", "role", "dice", "hd95_mm", "vol_pred_ml", "vol_ref_ml"}


def paired_ttest(x, y, confidence: float = 0.95) -> dict:
    """Paired t-test of x against y (difference x - y) with scipy; undefined cases give NaN and a note."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {y.shape}")
    d = x - y
    out = dict(n_pairs=int(d.size), mean_diff=float(d.mean()) if d.size else np.nan, ci_low=np.nan, ci_high=np.nan,
               t=np.nan, df=np.nan, p=np.nan, note="")
    if d.size < 2:
        out["note"] = "fewer than 2 pairs: no test"
        return out
    if np.ptp(d) == 0:
        out["note"] = "all differences equal: no test (zero variance)"
        return out
    res = sstats.ttest_rel(x, y)
    ci = res.confidence_interval(confidence)
    out.update(t=float(res.statistic), df=float(res.df), p=float(res.pvalue), ci_low=float(ci.low),
               ci_high=float(ci.high))
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels); NaN p-values stay NaN and do not count as tests."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def _pairs(a: pd.DataFrame, b: pd.DataFrame, metric: str):
    """Values of `metric` for the cases both tables have, plus counts of what was left out."""
    merged = a[["case", metric]].merge(b[["case", metric]], on="case", how="inner", suffixes=("_m", "_r"))
    x, y = merged[f"{metric}_m"].astype(float), merged[f"{metric}_r"].astype(float)
    defined = x.notna() & y.notna()
    counts = dict(n_undefined=int((~defined).sum()), n_model_only=int(len(set(a.case) - set(b.case))),
                  n_reference_only=int(len(set(b.case) - set(a.case))))
    return x[defined].to_numpy(), y[defined].to_numpy(), counts


def compare_models(per_case: pd.DataFrame, reference: str, metrics=tuple(COMPARED_METRICS),
                   by_center: bool = True) -> pd.DataFrame:
    """Every model against `reference`, per modality over all cases and (optionally) per center."""
    rows = []
    for modality, g in per_case.groupby("modality", sort=True):
        models = sorted(set(g.model) - {reference})
        if reference not in set(g.model):
            if models:
                raise ValueError(f"{modality}: reference model {reference!r} has no per-case metrics "
                                 f"(models present: {sorted(set(g.model))})")
            continue
        scopes = [("all", "all", g)]
        if by_center:
            scopes += [(c, "/".join(sorted(set(gc.role))), gc) for c, gc in g.groupby("center", sort=True)]
        for scope, role, gs in scopes:
            ref = gs[gs.model == reference]
            for model in models:
                mod = gs[gs.model == model]
                for metric in metrics:
                    x, y, counts = _pairs(mod, ref, metric)
                    test = paired_ttest(x, y)
                    rows.append(dict(modality=modality, family=f"{modality}/{'all' if scope == 'all' else 'centers'}",
                                     scope=scope, role=role, metric=metric, model=model, reference=reference,
                                     mean_model=float(np.mean(x)) if x.size else np.nan,
                                     mean_reference=float(np.mean(y)) if y.size else np.nan, **counts, **test))
    df = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    if len(df):
        df["p_holm"] = df.groupby("family", sort=False)["p"].transform(lambda p: pd.Series(holm(p), index=p.index))
    return df


def bland_altman(pred, ref) -> dict:
    """Bias and 95 % limits of agreement of pred - ref (sample sd, ddof=1)."""
    d = np.asarray(pred, float) - np.asarray(ref, float)
    bias = float(d.mean()) if d.size else np.nan
    sd = float(d.std(ddof=1)) if d.size > 1 else np.nan
    return dict(bias=bias, sd=sd, loa_low=bias - 1.96 * sd, loa_high=bias + 1.96 * sd)


def volume_agreement(pred, ref) -> dict:
    """Agreement of predicted with reference volumes: Pearson r², regression line, identity R², Bland-Altman, t-test."""
    from sklearn.metrics import r2_score

    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    out = dict(n=int(pred.size), mean_pred_ml=float(pred.mean()) if pred.size else np.nan,
               mean_ref_ml=float(ref.mean()) if ref.size else np.nan, pearson_r=np.nan, r2_pearson=np.nan,
               slope=np.nan, intercept=np.nan, r2_identity=np.nan)
    notes = []
    if pred.size >= 2 and np.ptp(ref) > 0:
        fit = sstats.linregress(ref, pred)
        out.update(slope=float(fit.slope), intercept=float(fit.intercept))
        out["r2_identity"] = float(r2_score(ref, pred))
        if np.ptp(pred) > 0:
            out.update(pearson_r=float(fit.rvalue), r2_pearson=float(fit.rvalue) ** 2)
    else:
        notes.append("fewer than 2 cases or constant reference volume: no correlation")
    ba = bland_altman(pred, ref)
    out.update(bias_ml=ba["bias"], sd_diff_ml=ba["sd"], loa_low_ml=ba["loa_low"], loa_high_ml=ba["loa_high"])
    test = paired_ttest(pred, ref)
    out.update(t=test["t"], df=test["df"], p=test["p"])
    if test["note"]:
        notes.append(test["note"])
    out["note"] = "; ".join(notes)
    return out


def volume_table(per_case: pd.DataFrame) -> pd.DataFrame:
    """Volume agreement per modality x model (all cases), Holm across models of a modality."""
    rows = []
    for (modality, model), g in per_case.groupby(["modality", "model"], sort=True):
        rows.append(dict(modality=modality, model=model, scope="all", family=f"{modality}/volume",
                         **volume_agreement(g.vol_pred_ml, g.vol_ref_ml)))
    df = pd.DataFrame(rows, columns=VOLUME_COLUMNS)
    if len(df):
        df["p_holm"] = df.groupby("family", sort=False)["p"].transform(lambda p: pd.Series(holm(p), index=p.index))
    return df


def read_metrics(paths) -> pd.DataFrame:
    """Concatenate per-center metrics tables; an unreadable table or a missing column names the file."""
    frames = []
    for path in paths:
        try:
            df = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["", "nan", "NaN"],
                             dtype={"case": str, "empty": str})
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise InputError(path, f"cannot be read as a metrics table ({exc})") from None
        missing = NEEDED - set(df.columns)
        if missing:
            raise InputError(path, f"metrics table lacks columns {sorted(missing)}")
        df["empty"] = df["empty"].fillna("") if "empty" in df else ""
        frames.append(df)
    if not frames:
        raise InputError("--metrics", "no metrics tables given")
    return pd.concat(frames, ignore_index=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Paired model comparisons and volume agreement for one modality.")
    ap.add_argument("--metrics", nargs="+", required=True, help="per-center metrics.tsv files (any models)")
    ap.add_argument("--reference", required=True, help="reference model of the paired tests")
    ap.add_argument("--out-comparisons", required=True)
    ap.add_argument("--out-volume", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        per_case = read_metrics(args.metrics)
    except InputError as exc:
        log.error("%s", exc)
        return 1
    comparisons = compare_models(per_case, args.reference)
    volume = volume_table(per_case)
    write_table(comparisons, args.out_comparisons, float_format="%.6g")
    write_table(volume, args.out_volume, float_format="%.6g")
    if comparisons.empty:
        log.info("only model %s: no paired comparisons (table written with its header only)",
                 sorted(set(per_case.model)))
    for r in comparisons[comparisons.scope == "all"].itertuples():
        log.info("%s %s vs %s, %s: n=%d diff %.4g [%.4g, %.4g] p=%.3g (Holm %.3g) %s", r.modality, r.model,
                 r.reference, r.metric, r.n_pairs, r.mean_diff, r.ci_low, r.ci_high, r.p, r.p_holm, r.note)
    for r in volume.itertuples():
        log.info("%s %s volume: n=%d r2 (Pearson) %.3f, R2 (identity) %.3f, bias %.2f mL [%.2f, %.2f]", r.modality,
                 r.model, r.n, r.r2_pearson, r.r2_identity, r.bias_ml, r.loa_low_ml, r.loa_high_ml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
