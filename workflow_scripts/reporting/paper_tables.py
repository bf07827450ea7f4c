"""The paper's tables from the statistics jobs, as CSV, Markdown, LaTeX and HTML (docs/results.md).

Every table is computed per setting (cv, external, loco, released, prompted: settings.py); a number
pooled over settings appears nowhere. Tables (``<out-dir>/<name>.{csv,md,tex,html}``; the CSV holds
numbers, the others the formatted table with its notes; the HTML is what the Snakemake report shows):

``modality_<M>``     one per modality: a row per setting x model with n participants / n scans,
                     Dice, NSD and HD95 mean ± sd [95 % cluster-bootstrap CI], failures, volume r²
                     and ICC [CI], the paired difference in Dice vs the reference [CI] with the
                     t-test and Wilcoxon p (Holm), and the paper's published values in a labelled row.
``cross_center``     a row per modality x setting x center: per model n, Dice and HD95, p (Holm,
                     family per modality x setting x unit, per center) against the reference model.
``paired_tests``     every within-setting comparison in full, both units.
``cross_setting``    every comparison across settings on identical scans (loco vs cv, released or
                     prompted vs the reference model's cv/external rows), both units.
``failures``         failed predictions per scan, exact McNemar test.
``mixed_model``      MixedLM per modality x setting x metric: model effects with CI, variance components.
``volume_agreement`` per modality x setting x model: ICC, r², Bland-Altman with CIs, proportional bias.
``agreement``        Cohen's kappa intra-/inter-rater with bootstrap CIs, rater Dice.

Empty masks (metrics.py): a case with both masks empty has no HD95 or NSD (left out, counted); an
empty prediction is a failure: Dice and NSD 0, HD95 the image diagonal in the mean ("worst-case
convention"), and left out of the HD95 tests.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.agreement import COLUMNS as AGREEMENT_COLUMNS
from workflow_scripts.evaluation.agreement import kappa_from_counts
from workflow_scripts.common.atomic import write_table, write_text
from workflow_scripts.evaluation.bootstrap import ClusterBootstrap, mean_ci, percentile_ci
from workflow_scripts.common.errors import InputError
from workflow_scripts.evaluation.mixed_model import COLUMNS as MIXED_COLUMNS
from workflow_scripts.evaluation.settings import SETTINGS, cv_label, order_settings
from workflow_scripts.evaluation.stats import (COMPARISON_COLUMNS, FAILURE_COLUMNS, UNGROUPED_WARNING, VOLUME_COLUMNS, read_metrics,
                    ungrouped_warning)

log = logging.getLogger(__name__)

FORMATS = ("csv", "md", "tex", "html")
REGION_NAMES = {"volume": "whole volume", "box": "union box"}
KIND_NAMES = {"intra": "intra-rater (same rater twice)", "inter": "inter-rater (two raters)"}
METRIC_NAMES = {"dice": "Dice", "nsd": "NSD", "hd95_mm": "HD95 (mm)"}
EMPTY_RULE = ("Failures and empty masks: an empty prediction is a failure (Dice and NSD 0); the HD95 mean keeps the "
              "worst-case convention (a failure counts as the image diagonal), HD95 tests use only pairs without a "
              "failure (the pairs left out are counted), and failures are compared with McNemar's test (failures "
              "table). A case with both masks empty has no HD95 or NSD (left out, counted).")
CI_NOTE = ("[..]: 95 % percentile interval of a stratified cluster bootstrap (participants resampled within centers, "
           "{n_boot} resamples); 't-CI': the t-based interval of the paired t-test.")
# The paper's own numbers (docs/facts.md §1): PanSegNet, case-level Dice mean ± sd, and volume R² per modality.
PUBLISHED = {"CT": dict(dice_mean=0.883, dice_sd=0.072, vol_r2=0.91),
             "T1": dict(dice_mean=0.850, dice_sd=0.079, vol_r2=0.84),
             "T2": dict(dice_mean=0.863, dice_sd=0.064, vol_r2=0.85)}
PUBLISHED_SOURCE = ("Zhang et al., Medical Image Analysis 99:103382 (2025), PanSegNet: Dice mean ± sd over the "
                    "paper's test cases and the volume R² it reports; its CIs, NSD and HD95 per modality are not "
                    "available to us")


@dataclass
class Table:
    name: str
    title: str
    data: pd.DataFrame  # numbers (CSV)
    display: pd.DataFrame  # formatted strings (Markdown, LaTeX, HTML)
    notes: list[str] = field(default_factory=list)
    synthetic: bool = False
    label_columns: int = 1  # leading text columns (left-aligned); the rest are numbers (right-aligned)


@dataclass
class Context:
    """What every table needs besides its own numbers."""
    reference: str
    unit: str = "participant"
    models: list[str] | None = None
    n_boot: int = 2000
    seed: int = 20240517
    synthetic: bool = False
    warning: str = ""  # participants not grouped; released weights evaluated on their own training data
    cv_label: str = "CV"
    labels: dict | None = None  # model -> row name (model_catalog.<model>.label)

    def model_name(self, model: str) -> str:
        label = (self.labels or {}).get(model)
        return f"{model}: {label}" if label and label != model else model


# ---- formatting ----------------------------------------------------------------------------
def pm(mean, sd, digits=1, scale=1.0) -> str:
    """'mean ± sd' (or 'mean' without an sd, 'n/a' without a mean)."""
    if mean is None or pd.isna(mean):
        return "n/a"
    if sd is None or pd.isna(sd):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def ci(low, high, digits=1, scale=1.0) -> str:
    """'[low, high]' or '' without an interval."""
    if low is None or pd.isna(low) or pd.isna(high):
        return ""
    return f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def pm_ci(mean, sd, low, high, digits=1, scale=1.0) -> str:
    text = pm(mean, sd, digits, scale)
    interval = ci(low, high, digits, scale)
    return f"{text} {interval}" if interval and text != "n/a" else text


def est_ci(value, low, high, digits=3, scale=1.0, signed=False) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    text = f"{scale * value:+.{digits}f}" if signed else f"{scale * value:.{digits}f}"
    interval = ci(low, high, digits, scale)
    return f"{text} {interval}" if interval else text


def fmt_p(p) -> str:
    if p is None or pd.isna(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_num(v, digits=3) -> str:
    return "n/a" if v is None or pd.isna(v) else f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"


def fmt_sig(v, digits=3) -> str:
    """Significant digits (variances span orders of magnitude)."""
    return "n/a" if v is None or pd.isna(v) else f"{v:.{digits}g}"


def n_cell(n_participants, n_scans) -> str:
    """'participants / scans'."""
    if pd.isna(n_scans):
        return "0 / 0"
    return f"{int(n_participants)} / {int(n_scans)}"


def setting_name(setting, context: Context) -> str:
    return {"cv": f"cv ({context.cv_label}, out-of-fold)", "external": "external (fold ensemble)",
            "loco": "loco (center left out)", "released": "released weights",
            "prompted": "prompted (reference box)"}.get(setting, setting)


def order_models(models, reference, configured=None) -> list[str]:
    """Reference first, then the configured order (or sorted)."""
    present = list(dict.fromkeys(models))
    order = [m for m in (configured or []) if m in present] + sorted(m for m in present if m not in (configured or []))
    if reference in order:
        order.remove(reference)
        order.insert(0, reference)
    return order


def _settings_sorted(df: pd.DataFrame) -> pd.DataFrame:
    rank = {s: i for i, s in enumerate(SETTINGS)}
    return df.assign(_s=df.setting.map(rank)).sort_values(["_s"], kind="stable").drop(columns="_s")


def ungrouped_from_descriptives(desc: pd.DataFrame) -> str:
    """The participant-grouping warning from descriptives (n participants = n scans in every row of a modality)."""
    d = desc[(desc.scope == "all") & (desc.n_scans > 1)]
    mods = sorted(m for m, g in d.groupby("modality") if (g.n_participants == g.n_scans).all())
    return UNGROUPED_WARNING.format(what=", ".join(mods)) if mods else ""


def _common_notes(context: Context) -> list[str]:
    return [context.warning] if context.warning else []


def _family_note(families) -> str:
    fams = sorted({f for f in families if isinstance(f, str) and f})
    if not fams:
        return ""
    return ("Holm families (t-test and Wilcoxon p adjusted separately within each): " + "; ".join(fams) + ".")


# ---- the modality table ----------------------------------------------------------------------
def _row_comparison(comparisons, cross, modality, setting, model, metric, unit):
    """The comparison shown in a row: within the setting, else across settings (vs the reference's cv first)."""
    c = comparisons[(comparisons.modality == modality) & (comparisons.setting == setting) & (comparisons.model == model)
                    & (comparisons.scope == "all") & (comparisons.unit == unit) & (comparisons.metric == metric)]
    if len(c):
        return c.iloc[0], str(c.iloc[0].reference)
    x = cross[(cross.modality == modality) & (cross.setting == setting) & (cross.model == model)
              & (cross.scope == "all") & (cross.unit == unit) & (cross.metric == metric)]
    if len(x):
        x = x.assign(_r=(x.reference_setting != "cv").astype(int)).sort_values("_r", kind="stable")
        r = x.iloc[0]
        return r, f"{r.reference} ({r.reference_setting})"
    return None, ""


def modality_table(modality, desc, comparisons, cross, volume, context: Context) -> Table:
    d = _settings_sorted(desc[(desc.modality == modality) & (desc.scope == "all")])
    rows, shown, families = [], [], []
    for setting in order_settings(d.setting):
        ds = d[d.setting == setting]
        for model in order_models(ds.model, context.reference, context.models):
            r = ds[ds.model == model].iloc[0]
            v = volume[(volume.modality == modality) & (volume.setting == setting) & (volume.model == model)]
            v = v.iloc[0] if len(v) else None
            cd, vs = _row_comparison(comparisons, cross, modality, setting, model, "dice", context.unit)
            ch, _ = _row_comparison(comparisons, cross, modality, setting, model, "hd95_mm", context.unit)
            is_ref = cd is None and model == context.reference
            for c in (cd, ch):
                if c is not None:
                    families.append(c.family)
            row = dict(modality=modality, setting=setting, model=model, is_reference=bool(is_ref),
                       n_participants=r.n_participants, n_scans=r.n_scans, n_centers=r.n_centers,
                       n_failures=r.n_failures, n_hd95_undefined=r.n_hd95_undefined, compared_with=vs)
            for m in ("dice", "nsd", "hd95", "hd95_nonfailed", "precision", "recall"):
                col = "hd95_mm" if m == "hd95" else m
                for stat in ("mean", "sd", "ci_low", "ci_high"):
                    row[f"{m}_{stat}"] = r[f"{col}_{stat}"]
            for key in ("r2_pearson", "r2_ci_low", "r2_ci_high", "icc", "icc_ci_low", "icc_ci_high"):
                row[f"vol_{key}"] = v[key] if v is not None else np.nan
            for short, c in (("dice", cd), ("hd95", ch)):
                for key in ("mean_diff", "ci_low", "ci_high", "p_t_holm", "p_wilcoxon_holm", "n_pairs"):
                    row[f"{short}_{key}"] = c[key] if c is not None else np.nan
            row["data_source"] = r.data_source
            rows.append(row)
            shown.append({
                "Setting": setting_name(setting, context), "Model": context.model_name(model) + (" (ref.)" if is_ref else ""),
                "n (part. / scans)": n_cell(r.n_participants, r.n_scans),
                "Dice (%)": pm_ci(r.dice_mean, r.dice_sd, r.dice_ci_low, r.dice_ci_high, 1, 100),
                "NSD (%)": pm_ci(r.nsd_mean, r.nsd_sd, r.nsd_ci_low, r.nsd_ci_high, 1, 100),
                "HD95 (mm)*": pm_ci(r.hd95_mm_mean, r.hd95_mm_sd, r.hd95_mm_ci_low, r.hd95_mm_ci_high, 2),
                "Failures": f"{int(r.n_failures)} / {int(r.n_scans)}",
                "Volume r²": est_ci(row["vol_r2_pearson"], row["vol_r2_ci_low"], row["vol_r2_ci_high"], 3),
                "Volume ICC": est_ci(row["vol_icc"], row["vol_icc_ci_low"], row["vol_icc_ci_high"], 3),
                "vs": vs or ("reference" if is_ref else "—"),
                "Δ Dice (%)": est_ci(row["dice_mean_diff"], row["dice_ci_low"], row["dice_ci_high"], 1, 100,
                                      signed=True) if cd is not None else "—",
                "p Dice t / W (Holm)": f"{fmt_p(row['dice_p_t_holm'])} / {fmt_p(row['dice_p_wilcoxon_holm'])}"
                if cd is not None else "—",
                "p HD95 t / W (Holm)": f"{fmt_p(row['hd95_p_t_holm'])} / {fmt_p(row['hd95_p_wilcoxon_holm'])}"
                if ch is not None else "—",
            })
    pub = PUBLISHED.get(modality)
    if pub:
        rows.append(dict(modality=modality, setting="published", model="pansegnet", is_reference=False,
                         dice_mean=pub["dice_mean"], dice_sd=pub["dice_sd"], vol_r2_pearson=pub["vol_r2"],
                         compared_with="", data_source="published"))
        shown.append({"Setting": "published (paper)", "Model": "PanSegNet, as published", "n (part. / scans)": "—",
                      "Dice (%)": pm(pub["dice_mean"], pub["dice_sd"], 1, 100), "NSD (%)": "—", "HD95 (mm)*": "—",
                      "Failures": "—", "Volume r²": f"{pub['vol_r2']:.2f}", "Volume ICC": "—", "vs": "—",
                      "Δ Dice (%)": "—", "p Dice t / W (Holm)": "—", "p HD95 t / W (Holm)": "—"})
    notes = _common_notes(context) + [
        "One row per setting x model; settings are never pooled. n = participants / scans. Mean ± sd over scans "
        "(sd with ddof=1) " + CI_NOTE.format(n_boot=context.n_boot).replace("[..]:", "with [95 % CI]:"),
        "Dice = 2|P∩R|/(|P|+|R|); NSD = share of both surfaces within the tolerance of the other (surface voxels); "
        "HD95 = max of the two directed 95th percentiles of surface distances in mm (MONAI's definition). "
        "* HD95 mean with the worst-case convention: a failed (empty) prediction counts as the image diagonal.",
        f"Δ Dice = mean paired difference (row model − 'vs'), unit: {context.unit} means "
        "(the other unit is in the paired_tests / cross_setting tables), on identical scans; p: paired t-test and "
        "Wilcoxon signed-rank test, Holm-corrected. Rows of loco, released and prompted settings are compared "
        "across settings with the model named in 'vs' (its setting in brackets).",
        "Volume r² = squared Pearson correlation of predicted and reference volume (the paper's R²); ICC = "
        "ICC(A,1), two-way, absolute agreement, single measure (pingouin).",
        f"Published row: {PUBLISHED_SOURCE}. The reproduction gap is the difference to our rows.",
        EMPTY_RULE,
    ]
    fam = _family_note(families)
    if fam:
        notes.append(fam)
    if not any(c for c in (r.get("compared_with") for r in rows)):
        notes.append("Only one model per setting: no comparisons with a reference model.")
    return Table(f"modality_{modality}", f"{modality}: segmentation results per setting and model", pd.DataFrame(rows),
                 pd.DataFrame(shown), notes, context.synthetic, 2)


# ---- per center ------------------------------------------------------------------------------
def cross_center_table(desc, comparisons, context: Context) -> Table:
    rows, shown, families = [], [], []
    d = desc[desc.scope != "all"]
    models = order_models(d.model, context.reference, context.models)
    for (modality, setting, center), g in _settings_sorted(d).groupby(["modality", "setting", "scope"], sort=False):
        row = dict(modality=modality, setting=setting, center=center)
        disp = {"Modality": modality, "Setting": setting, "Center": center}
        comp = comparisons[(comparisons.modality == modality) & (comparisons.setting == setting)
                           & (comparisons.scope == center) & (comparisons.unit == context.unit)]
        for model in models:
            gm = g[g.model == model]
            if gm.empty:
                continue
            r = gm.iloc[0]
            row.update({f"{model}_n_participants": r.n_participants, f"{model}_n": r.n_scans,
                        f"{model}_dice_mean": r.dice_mean, f"{model}_dice_sd": r.dice_sd,
                        f"{model}_dice_ci_low": r.dice_ci_low, f"{model}_dice_ci_high": r.dice_ci_high,
                        f"{model}_hd95_mean": r.hd95_mm_mean, f"{model}_hd95_sd": r.hd95_mm_sd,
                        f"{model}_n_failures": r.n_failures, f"{model}_n_hd95_undefined": r.n_hd95_undefined})
            disp.update({f"{model} n": n_cell(r.n_participants, r.n_scans),
                         f"{model} Dice (%)": pm_ci(r.dice_mean, r.dice_sd, r.dice_ci_low, r.dice_ci_high, 1, 100),
                         f"{model} HD95 (mm)*": pm(r.hd95_mm_mean, r.hd95_mm_sd, 2)})
            for metric, short in (("dice", "Dice"), ("hd95_mm", "HD95")):
                c = comp[(comp.model == model) & (comp.metric == metric)]
                if len(c):
                    c = c.iloc[0]
                    families.append(c.family)
                    row[f"{model}_p_{metric.split('_')[0]}_holm"] = c.p_t_holm
                    row[f"{model}_p_{metric.split('_')[0]}_wilcoxon_holm"] = c.p_wilcoxon_holm
                    disp[f"{model} p {short} t / W"] = f"{fmt_p(c.p_t_holm)} / {fmt_p(c.p_wilcoxon_holm)}"
        rows.append(row)
        shown.append(disp)
    notes = _common_notes(context) + [
        f"A row per modality x setting x center (settings never pooled): cv = out-of-fold predictions of "
        f"{context.cv_label}, external = fold ensemble on a center never trained on, loco = model trained without "
        "the center. n = participants / scans; Dice (%) mean ± sd " + CI_NOTE.format(n_boot=context.n_boot).replace(
            "[..]:", "[95 % CI]:"),
        f"p: paired t-test / Wilcoxon signed-rank test against the reference model {context.reference} within the "
        f"center on {context.unit} means, each Holm-corrected within its family <modality>/<setting>/{context.unit}/"
        "per center (every center x model x metric of that modality and setting), never across the whole table.",
        EMPTY_RULE]
    fam = _family_note(families)
    if fam:
        notes.append(fam)
    if len(models) < 2:
        notes.append("Only one model: no comparisons with a reference model.")
    # A model without rows in a setting (e.g. a released model in the cv rows) shows a dash.
    return Table("cross_center", "Results per center and setting", pd.DataFrame(rows), pd.DataFrame(shown).fillna("—"),
                 notes, context.synthetic, 3)


# ---- comparisons in full ---------------------------------------------------------------------
def _comparison_display(c: pd.DataFrame, across: bool) -> pd.DataFrame:
    def diff(r):
        digits = 2 if r.metric == "hd95_mm" else 4
        return est_ci(r.mean_diff, r.ci_low, r.ci_high, digits, signed=True)

    return pd.DataFrame({
        "Modality": c.modality,
        "Setting": [f"{s} vs {rs}" for s, rs in zip(c.setting, c.reference_setting)] if across else c.setting,
        "Unit": [u + (" (primary)" if p else "") for u, p in zip(c.unit, c.primary)], "Scope": c.scope,
        "Metric": c.metric.map(METRIC_NAMES).fillna(c.metric), "Model": c.model, "vs": c.reference,
        "n pairs (part. / scans)": [f"{int(a)} ({int(b)} / {int(s)})" for a, b, s in zip(c.n_pairs, c.n_participants,
                                                                                       c.n_scans)],
        "excluded": c.n_excluded.astype(int).astype(str),
        "Mean diff. [boot. CI]": [diff(r) for r in c.itertuples()],
        "t-CI": [ci(a, b, 2 if m == "hd95_mm" else 4) or "n/a" for a, b, m in zip(c.t_ci_low, c.t_ci_high, c.metric)],
        "d_z": [fmt_num(v, 2) for v in c.d_z],
        "t": ["n/a" if pd.isna(t) else f"{t:.3f}" for t in c.t],
        "p t (Holm)": [f"{fmt_p(a)} ({fmt_p(b)})" for a, b in zip(c.p_t, c.p_t_holm)],
        "W": ["n/a" if pd.isna(w) else f"{w:g}" for w in c.w],
        "p W (Holm)": [f"{fmt_p(a)} ({fmt_p(b)})" for a, b in zip(c.p_wilcoxon, c.p_wilcoxon_holm)],
        "Holm family": c.family, "Note": c.note.fillna(""),
    })


def comparisons_table(comparisons: pd.DataFrame, context: Context, across: bool) -> Table:
    c = _settings_sorted(comparisons) if len(comparisons) else comparisons
    shown = _comparison_display(c, across) if len(c) else pd.DataFrame()
    what = ("across settings on identical scans: loco vs cv of the same model; released and prompted models vs the "
            f"reference model {context.reference}'s cv and external rows of the same scans" if across else
            f"within each setting: every model vs the reference model {context.reference} on identical scans")
    notes = _common_notes(context) + [
        f"Paired comparisons {what}. Difference = model − reference (Dice and NSD as fractions, HD95 in mm). Unit "
        f"'participant': the mean over a participant's scans (the primary unit is {context.unit}); unit 'scan': every "
        "scan one pair (sensitivity analysis). n pairs = units tested (participants / scans behind them); "
        "excluded = identical scans left out (HD95: a failed prediction on either side; any metric: undefined).",
        CI_NOTE.format(n_boot=context.n_boot) + " d_z = mean / sd of the paired differences (Cohen's d_z).",
        "Two-sided paired t-test (scipy ttest_rel) and Wilcoxon signed-rank test (scipy wilcoxon), each "
        "Holm-corrected (statsmodels multipletests) within its family, named in the column 'Holm family': "
        "modality / setting" + (" pair" if across else "") + " / unit / all centers or per center. Below min_pairs "
        "pairs a test gives no p-value (see Note).",
    ]
    if c.empty:
        notes.insert(len(_common_notes(context)), "No comparison: " + ("no setting pair on identical scans (no loco, released or prompted rows)."
                                             if across else "only one model per setting."))
    name, title = (("cross_setting", "Comparisons across settings (identical scans)") if across else
                   ("paired_tests", "Paired comparisons within each setting"))
    return Table(name, title, c, shown, notes, context.synthetic, 7)


def failures_table(failures: pd.DataFrame, context: Context) -> Table:
    f = _settings_sorted(failures) if len(failures) else failures
    shown = pd.DataFrame({
        "Modality": f.modality, "Setting": [s if s == rs else f"{s} vs {rs}" for s, rs in zip(f.setting,
                                                                                              f.reference_setting)],
        "Scope": f.scope, "Model": f.model, "vs": f.reference,
        "n (part. / scans)": [n_cell(a, b) for a, b in zip(f.n_participants, f.n_scans)],
        "Failures model / ref.": [f"{a} / {b}" for a, b in zip(f.failures_model, f.failures_reference)],
        "Only model / only ref.": [f"{a} / {b}" for a, b in zip(f.model_only, f.reference_only)],
        "Δ rate (%) [CI]": [est_ci(a, lo, hi, 1, 100, signed=True) for a, lo, hi in zip(f.rate_diff, f.ci_low,
                                                                                          f.ci_high)],
        "p McNemar (Holm)": [f"{fmt_p(a)} ({fmt_p(b)})" for a, b in zip(f.p_mcnemar, f.p_mcnemar_holm)],
        "Holm family": f.family, "Note": f.note.fillna(""),
    }) if len(f) else pd.DataFrame()
    notes = _common_notes(context) + [
        "A failure is an empty prediction (and, where statistics.failure_dice is set, a Dice below it); "
        "failures are compared per scan on identical scans with the exact McNemar test (statsmodels; binomial test "
        "on the discordant scans), Holm-corrected within modality / setting (pair) / failures / all centers or per "
        "center. Δ rate = failure rate of the model − the reference " + CI_NOTE.format(n_boot=context.n_boot).replace(
            "[..]:", "with [95 % CI]:")]
    if f.empty:
        notes.insert(len(_common_notes(context)), "No comparison: only one model per setting.")
    return Table("failures", "Failed predictions (McNemar)", f, shown, notes, context.synthetic, 5)


def mixed_model_table(mixed: pd.DataFrame, context: Context) -> Table:
    m = _settings_sorted(mixed) if len(mixed) else mixed
    shown = pd.DataFrame({
        "Modality": m.modality, "Setting": m.setting, "Metric": m.metric.map(METRIC_NAMES).fillna(m.metric),
        "Model": m.model, "vs": m.reference,
        "n (part. / scans / centers)": [f"{n_cell(a, b)} / {c:.0f}" if pd.notna(c) else "n/a"
                                        for a, b, c in zip(m.n_participants, m.n_scans, m.n_centers)],
        "Effect [95% CI]": [est_ci(e, lo, hi, 2 if k == "hd95_mm" else 4, signed=True)
                            for e, lo, hi, k in zip(m.effect, m.ci_low, m.ci_high, m.metric)],
        "p": [fmt_p(p) for p in m.p],
        "Var center": [fmt_sig(v) for v in m.center_var], "Var participant": [fmt_sig(v) for v in m.participant_var],
        "Var residual": [fmt_sig(v) for v in m.residual_var],
        "Center share (%)": ["n/a" if pd.isna(v) else f"{100 * v:.1f}" for v in m.center_share],
        "Converged": ["yes" if c is True or str(c) == "True" else "NO" for c in m.converged],
        "Note": m.note.fillna(""),
    }) if len(m) else pd.DataFrame()
    formula = (f"metric ~ model (treatment coding, baseline {context.reference}) + center (random intercept, the "
               "group) + participant within center (variance component) + residual; statsmodels MixedLM, REML")
    notes = _common_notes(context) + [
        f"Linear mixed model per modality x setting x metric on the scans every model of the setting has: {formula}. "
        "Effect = the model's fixed effect vs the reference with its 95 % Wald CI and p; variances of center, "
        "participant and residual; center share = center / (center + participant + residual).",
        "With one center in a setting the center variance is not estimable: the center term is dropped and the "
        "participant is the group (Note says so). HD95 is modelled on scans where no model's prediction failed.",
        "p: Wald test of the effect, not adjusted for multiplicity (the mixed model checks the paired tests for "
        "center effects; the Holm-adjusted tests are in paired_tests). The per-row formula is in the CSV (column "
        "formula)."]
    if m.empty:
        notes.insert(len(_common_notes(context)), "No model: fewer than two models in every setting.")
    return Table("mixed_model", "Center effects: linear mixed models", m, shown, notes, context.synthetic, 5)


def volume_agreement_table(volume: pd.DataFrame, context: Context) -> Table:
    v = _settings_sorted(volume) if len(volume) else volume

    def limits(r):
        if pd.isna(r.rb_bias_b0):
            return "—"
        return (f"({r.rb_bias_b0:+.2f} {r.rb_bias_b1:+.3f}·A) ± 1.96·√(π/2)·({r.rb_sd_c0:.2f} {r.rb_sd_c1:+.3f}·A)")

    shown = pd.DataFrame({
        "Modality": v.modality, "Setting": v.setting, "Model": v.model,
        "n (part. / scans)": [n_cell(a, b) for a, b in zip(v.n_participants, v.n_scans)],
        "ICC(A,1) [CI]": [est_ci(a, lo, hi, 3) for a, lo, hi in zip(v.icc, v.icc_ci_low, v.icc_ci_high)],
        "r² (Pearson) [CI]": [est_ci(a, lo, hi, 3) for a, lo, hi in zip(v.r2_pearson, v.r2_ci_low, v.r2_ci_high)],
        "Slope": [fmt_num(x) for x in v.slope], "Intercept (mL)": [fmt_num(x, 2) for x in v.intercept],
        "R² (identity)": [fmt_num(x) for x in v.r2_identity],
        "Bias (mL) [CI]": [est_ci(a, lo, hi, 2, signed=True) for a, lo, hi in zip(v.bias_ml, v.bias_ci_low,
                                                                                   v.bias_ci_high)],
        "LoA low (mL) [CI]": [est_ci(a, lo, hi, 2) for a, lo, hi in zip(v.loa_low_ml, v.loa_low_ci_low,
                                                                         v.loa_low_ci_high)],
        "LoA high (mL) [CI]": [est_ci(a, lo, hi, 2) for a, lo, hi in zip(v.loa_high_ml, v.loa_high_ci_low,
                                                                          v.loa_high_ci_high)],
        "Prop. bias slope (p)": [f"{fmt_num(a)} ({fmt_p(p)})" for a, p in zip(v.prop_bias_slope, v.prop_bias_p)],
        "Regression-based limits": [limits(r) for r in v.itertuples()],
        "p t / W pred vs ref (Holm)": [f"{fmt_p(a)} / {fmt_p(b)}" for a, b in zip(v.p_t_holm, v.p_wilcoxon_holm)],
    }) if len(v) else pd.DataFrame()
    notes = _common_notes(context) + [
        "Per setting x model, every scan one measurement pair (predicted, reference volume in mL); intervals " +
        CI_NOTE.format(n_boot=context.n_boot).replace("[..]: ", ""),
        "ICC(A,1): two-way, absolute agreement, single measure (McGraw & Wong; Shrout & Fleiss ICC(2,1); pingouin). "
        "r² (Pearson) = squared Pearson correlation (the paper's R²); slope and intercept of pred = slope·ref + "
        "intercept; R² (identity) = sklearn r2_score(ref, pred), which also penalises bias.",
        "Bland–Altman: bias = mean(pred − ref), limits of agreement (LoA) = bias ± 1.96·sd (ddof=1). Proportional "
        "bias: least-squares regression of the difference on the mean A = (pred + ref)/2 (slope, p); where p < 0.05 "
        "the regression-based limits of Bland & Altman (1999) are given: bias line b0 + b1·A, limits ± 1.96·√(π/2) "
        "times the regression of |residual| on A.",
        "p: paired t-test and Wilcoxon signed-rank test of predicted vs reference volume (scan unit), Holm-corrected "
        "within modality / setting / volume (the models of that setting)."]
    return Table("volume_agreement", "Volume agreement: predicted vs reference pancreas volume", v, shown, notes,
                 context.synthetic, 3)


# ---- rater agreement -------------------------------------------------------------------------
def _kappa_from_sums(s: np.ndarray) -> np.ndarray:
    n11, n10, n01, n00 = (s[..., i] for i in range(4))
    n = n11 + n10 + n01 + n00
    with np.errstate(divide="ignore", invalid="ignore"):
        po = (n11 + n00) / n
        pe = ((n11 + n10) * (n11 + n01) + (n01 + n00) * (n10 + n00)) / (n * n)
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)


def agreement_summary(agreement: pd.DataFrame, context: Context) -> Table:
    rows, shown = [], []
    for (modality, kind), g in agreement.groupby(["modality", "kind"], sort=True):
        centers = g.center.astype(str).to_numpy() if "center" in g else np.full(len(g), "")
        boot = ClusterBootstrap(g.participant_id.astype(str).to_numpy(), centers, context.n_boot, context.seed)
        for region in ("volume", "box"):
            k = g[f"kappa_{region}"].astype(float)
            counts = g[[f"{c}_{region}" for c in ("n11", "n10", "n01", "n00")]].to_numpy(float)
            pooled = kappa_from_counts(*counts.sum(0))
            ok = k.notna().to_numpy()
            kboot = ClusterBootstrap(g.participant_id.astype(str).to_numpy()[ok], centers[ok], context.n_boot,
                                     context.seed)
            klo, khi = mean_ci(kboot, k.to_numpy()[ok])
            plo, phi = (percentile_ci(_kappa_from_sums(boot.resampled_sums(counts))) if context.n_boot
                        and boot.n_clusters >= 2 else (np.nan, np.nan))
            dlo, dhi = mean_ci(boot, g.dice.astype(float).to_numpy())
            row = dict(modality=modality, kind=kind, region=region, n_cases=len(g),
                       n_participants=int(g.participant_id.nunique()), kappa_mean=float(k.mean()),
                       kappa_sd=float(k.std(ddof=1)) if k.notna().sum() > 1 else np.nan, kappa_ci_low=klo,
                       kappa_ci_high=khi, kappa_pooled=pooled, kappa_pooled_ci_low=plo, kappa_pooled_ci_high=phi,
                       rater_dice_mean=float(g.dice.mean()),
                       rater_dice_sd=float(g.dice.std(ddof=1)) if len(g) > 1 else np.nan, rater_dice_ci_low=dlo,
                       rater_dice_ci_high=dhi, box_margin_mm=float(g.box_margin_mm.iloc[0]))
            rows.append(row)
            shown.append({"Modality": modality, "Agreement": KIND_NAMES.get(kind, kind),
                          "Region": REGION_NAMES[region] + (f" (± {row['box_margin_mm']:g} mm)" if region == "box"
                                                            else ""),
                          "n (part. / scans)": n_cell(row["n_participants"], len(g)),
                          "Cohen's κ": pm_ci(row["kappa_mean"], row["kappa_sd"], klo, khi, 3),
                          "κ pooled": est_ci(pooled, plo, phi, 3),
                          "Rater Dice": pm_ci(row["rater_dice_mean"], row["rater_dice_sd"], dlo, dhi, 3)})
    columns = ["modality", "kind", "region", "n_cases", "n_participants", "kappa_mean", "kappa_sd", "kappa_ci_low",
               "kappa_ci_high", "kappa_pooled", "kappa_pooled_ci_low", "kappa_pooled_ci_high", "rater_dice_mean",
               "rater_dice_sd", "rater_dice_ci_low", "rater_dice_ci_high", "box_margin_mm"]
    notes = _common_notes(context) + [
        "Cohen's κ computed voxel-wise from the 2x2 confusion counts of the reference label and the second "
        "annotation (equals sklearn's cohen_kappa_score). Intra-rater: the same rater annotated the case again "
        "(label_repeat); inter-rater: a second rater (label_rater2).",
        "κ depends on the region: 'whole volume' counts every background voxel as agreement (κ close to Dice); "
        "'union box' is the bounding box of both annotations grown by the margin on every side. κ mean ± sd over "
        "cases; κ pooled from the summed counts. Rater Dice does not depend on the region. "
        + CI_NOTE.format(n_boot=context.n_boot).replace("; 't-CI': the t-based interval of the paired t-test", ""),
    ]
    if agreement.empty:
        notes.insert(len(_common_notes(context)), "No case has a second annotation (manifest columns label_rater2 / label_repeat are empty): "
                        "no agreement to report.")
    synthetic = "synthetic" in ",".join(agreement.data_source.astype(str)) if len(agreement) else False
    return Table("agreement", "Intra- and inter-rater agreement of the reference annotations",
                 pd.DataFrame(rows, columns=columns), pd.DataFrame(shown), notes, synthetic, 3)


# ---- writers -------------------------------------------------------------------------------
SYNTHETIC_BANNER = "SYNTHETIC DATA: generated by the demo; these numbers say nothing about real scans."


def to_markdown(t: Table, study: str) -> str:
    lines = [f"# {t.title} ({study})", ""]
    if t.synthetic:
        lines += [f"**{SYNTHETIC_BANNER}**", ""]
    d = t.display
    if len(d.columns):
        lines.append("| " + " | ".join(str(c) for c in d.columns) + " |")
        lines.append("|" + "|".join("---" if i < t.label_columns else "---:" for i in range(len(d.columns))) + "|")
        for row in d.itertuples(index=False):
            lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    else:
        lines.append("*(no rows)*")
    lines.append("")
    lines += [f"- {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
_TEX_SYMBOLS = {"±": r"$\pm$", "²": r"$^2$", "κ": r"$\kappa$", "−": "$-$", "–": "--", "—": "---", "≤": r"$\le$",
                "<": r"$<$", "∩": r"$\cap$", "·": r"$\cdot$", "|": r"$|$"}


def tex_escape(text) -> str:
    s = "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))
    for sym, rep in _TEX_SYMBOLS.items():
        s = s.replace(sym, rep)
    return s


def to_latex(t: Table, study: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); pandas' to_latex with cells escaped here."""
    d = t.display.copy()
    d.columns = [tex_escape(c) for c in d.columns]
    for c in d.columns:
        d[c] = d[c].map(tex_escape)
    caption = tex_escape(("SYNTHETIC DATA. " if t.synthetic else "") + t.title + f" ({study}). " + " ".join(t.notes))
    if len(d.columns):
        align = "l" * min(t.label_columns, len(d.columns)) + "r" * max(len(d.columns) - t.label_columns, 0)
        body = d.to_latex(index=False, escape=False, column_format=align,
                          caption=caption, label=f"tab:{t.name}", position="htbp")
    else:
        body = f"% {t.name}: no rows\n"
    return f"% {t.name}: generated by workflow_scripts.paper_tables; needs \\usepackage{{booktabs}}\n" + body


def to_html(t: Table, study: str) -> str:
    banner = f'<p class="synthetic">{html.escape(SYNTHETIC_BANNER)}</p>' if t.synthetic else ""
    table = t.display.to_html(index=False, escape=True, border=0, classes="results") if len(t.display.columns) \
        else "<p><em>(no rows)</em></p>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in t.notes)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(t.title)}</title>
<style>
body {{ font-family: sans-serif; font-size: 14px; margin: 1em; }}
table.results {{ border-collapse: collapse; }}
table.results th, table.results td {{ padding: 3px 9px; border-bottom: 1px solid #ccc; text-align: right; }}
table.results th {{ background: #eee; }}
table.results td:nth-child(-n+{t.label_columns}), table.results th:nth-child(-n+{t.label_columns}) {{
  text-align: left; }}
.synthetic {{ color: #a00; font-weight: bold; }}
li {{ margin: 0.3em 0; }}
</style></head>
<body><h3>{html.escape(t.title)} ({html.escape(study)})</h3>{banner}{table}<ul>{notes}</ul></body></html>
"""


def write_outputs(t: Table, out_dir, study: str) -> list[Path]:
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{t.name}.{ext}" for ext in FORMATS}
    write_table(t.data, paths["csv"], float_format="%.6g")
    write_text(paths["md"], to_markdown(t, study))
    write_text(paths["tex"], to_latex(t, study))
    write_text(paths["html"], to_html(t, study))
    return list(paths.values())


def read_stats_tables(paths, columns, what) -> pd.DataFrame:
    """Concatenate statistics tables; a missing column or an unreadable file is an error naming it."""
    frames = []
    for p in paths or []:
        try:
            df = pd.read_csv(p, sep="\t", keep_default_na=False, na_values=["", "nan", "NaN"])
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise InputError(p, f"cannot be read as a {what} table ({exc})") from None
        missing = set(columns) - set(df.columns)
        if missing:
            raise InputError(p, f"lacks columns {sorted(missing)[:5]} (written by another version?)")
        if len(df):
            frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    for col in ("note", "family", "formula"):
        if col in out:
            out[col] = ["" if pd.isna(v) else str(v) for v in out[col]]
    for col in ("primary", "converged"):
        if col in out:
            out[col] = [str(v) == "True" for v in out[col]]
    return out


def build_tables(per_case, stats: dict, agreement, context: Context, modalities) -> list[Table]:
    """Every paper table from the per-case rows (for labels and warnings) and the statistics tables."""
    tables = [modality_table(m, stats["descriptives"], stats["comparisons"], stats["cross_setting"],
                             stats["volume"], context) for m in modalities]
    tables.append(cross_center_table(stats["descriptives"], stats["comparisons"], context))
    tables.append(agreement_summary(agreement, context))
    tables.append(comparisons_table(stats["comparisons"], context, across=False))
    tables.append(comparisons_table(stats["cross_setting"], context, across=True))
    tables.append(failures_table(stats["failures"], context))
    tables.append(mixed_model_table(stats["mixed_model"], context))
    tables.append(volume_agreement_table(stats["volume"], context))
    return tables


RELEASED_BANNER = ("Released weights ({models}): trained by the authors on most of these scans: not an independent "
                   "test. The per-case column authors_validation marks the scans their published folder lists as "
                   "held out (fold-0 validation): the fair subset.")


def released_banner(per_case) -> str:
    """The banner every table carries when a released-weights model is among its rows' sources."""
    models = sorted(set(per_case.model[per_case.setting == "released"]))
    return RELEASED_BANNER.format(models=", ".join(models)) if models else ""


def context_for(per_case, reference, unit="participant", models=None, n_boot=2000, seed=20240517,
                labels=None) -> Context:
    cv = per_case[per_case.setting == "cv"]
    warning = " ".join(w for w in (ungrouped_warning(per_case), released_banner(per_case)) if w)
    return Context(reference=reference, unit=unit, models=models, n_boot=n_boot, seed=seed,
                   synthetic="synthetic" in ",".join(per_case.data_source.astype(str)),
                   warning=warning, cv_label=cv_label(cv.n_folds) if len(cv) else "CV", labels=labels)


STATS_COLUMNS = {"comparisons": COMPARISON_COLUMNS, "cross_setting": COMPARISON_COLUMNS, "failures": FAILURE_COLUMNS,
                 "volume": VOLUME_COLUMNS, "mixed_model": MIXED_COLUMNS,
                 "descriptives": ["modality", "setting", "model", "scope", "n_scans", "n_participants", "dice_mean",
                                  "dice_ci_low", "hd95_mm_mean", "nsd_mean"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Paper tables (CSV, Markdown, LaTeX, HTML).")
    ap.add_argument("--metrics", nargs="+", required=True, help="per-case metrics tables of every modality")
    for name in STATS_COLUMNS:
        ap.add_argument(f"--{name.replace('_', '-')}", nargs="*", default=[], help=f"stats {name}.tsv per modality")
    ap.add_argument("--agreement", nargs="*", default=[], help="agreement tsv per modality")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--models", nargs="*", default=None, help="configured model order")
    ap.add_argument("--labels", default="{}", help="JSON {model: row name} (model_catalog labels)")
    ap.add_argument("--modalities", nargs="+", required=True)
    ap.add_argument("--unit", choices=("participant", "scan"), default="participant")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=20240517)
    ap.add_argument("--study", default="study")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        per_case = read_metrics(args.metrics)
        stats = {name: read_stats_tables(getattr(args, name), cols, name) for name, cols in STATS_COLUMNS.items()}
        agreement = read_stats_tables(args.agreement, AGREEMENT_COLUMNS, "agreement")
    except InputError as exc:
        log.error("%s", exc)
        return 1
    context = context_for(per_case, args.reference, args.unit, args.models, args.n_boot, args.seed,
                          json.loads(args.labels))
    if context.warning:
        log.warning("%s", context.warning)
    for t in build_tables(per_case, stats, agreement, context, args.modalities):
        for path in write_outputs(t, args.out_dir, args.study):
            log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
