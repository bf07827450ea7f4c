"""The paper's tables from per-case metrics and the statistics jobs, as CSV, Markdown, LaTeX and HTML.

Tables (``<out-dir>/<name>.{csv,md,tex,html}``; the CSV holds numbers, the others the formatted
table with its notes; the HTML is what the Snakemake report shows):

``modality_<M>``   one per modality, a row per model: n, Dice and HD95 mean ± sd, precision,
                   recall, volume r² (squared Pearson r, the paper's R²) and the paired t-test p
                   (Holm) of Dice and HD95 against the reference model.
``cross_center``   a row per modality x center (with its role): per model n, Dice and HD95
                   mean ± sd, and p (Holm over the table) against the reference model.
``agreement``      Cohen's kappa, intra- and inter-rater, per modality, in the whole volume and
                   in the dilated union box, with the Dice between the raters beside it.
``paired_tests``   every paired comparison in full (n, mean difference, 95 % CI, t, p, Holm p).
``volume_agreement``  per modality x model: r² (Pearson), slope, intercept, R² (identity line),
                   Bland-Altman bias and limits of agreement, paired t-test of the volumes.

Empty masks (see metrics.py): a case with both masks empty has no HD95; it is left out of the
HD95 mean and counted; an empty prediction enters with the worst-case distance and is counted.
"""

from __future__ import annotations

import argparse
import html
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .agreement import COLUMNS as AGREEMENT_COLUMNS
from .agreement import pooled_kappa
from .atomic import write_table, write_text
from .errors import InputError
from .stats import COMPARISON_COLUMNS, VOLUME_COLUMNS, read_metrics

log = logging.getLogger(__name__)

FORMATS = ("csv", "md", "tex", "html")
REGION_NAMES = {"volume": "whole volume", "box": "union box"}
KIND_NAMES = {"intra": "intra-rater (same rater twice)", "inter": "inter-rater (two raters)"}
EMPTY_RULE = ("Empty masks: a case with both masks empty has no HD95 (left out of the HD95 mean, counted in "
              "'HD95 undef.'); an empty prediction scores Dice 0 and the worst-case distance (the image "
              "diagonal), counted in 'empty pred.'.")


@dataclass
class Table:
    name: str
    title: str
    data: pd.DataFrame  # numbers (CSV)
    display: pd.DataFrame  # formatted strings (Markdown, LaTeX, HTML)
    notes: list[str] = field(default_factory=list)
    synthetic: bool = False
    label_columns: int = 1  # leading text columns (left-aligned); the rest are numbers (right-aligned)


def pm(mean, sd, digits=1, scale=1.0) -> str:
    """'mean ± sd' (or 'mean' without an sd, 'n/a' without a mean)."""
    if mean is None or pd.isna(mean):
        return "n/a"
    if sd is None or pd.isna(sd):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def cv_name(rows: pd.DataFrame) -> str:
    """'5-fold CV' from the per-case `setting` column (evaluate --setting), 'CV' where it is absent."""
    settings = {str(s) for s in rows.get("setting", pd.Series(dtype=str)).dropna() if str(s).endswith("-fold-cv")}
    return settings.pop().replace("-fold-cv", "-fold CV") if len(settings) == 1 else "CV"


def fmt_p(p) -> str:
    if p is None or pd.isna(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _sd(x) -> float:
    x = pd.Series(x, dtype=float).dropna()
    return float(x.std(ddof=1)) if len(x) > 1 else np.nan


def describe(g: pd.DataFrame) -> dict:
    """n, mean and sd (ddof=1) of the per-case metrics of one group; empty-mask counts."""
    hd = g.hd95_mm.astype(float)
    out = dict(n=len(g), n_empty_pred=int((g["empty"] == "pred").sum()), n_empty_ref=int((g["empty"] == "ref").sum()),
               n_hd95_undefined=int(hd.isna().sum()))
    for col, name in [("dice", "dice"), ("hd95_mm", "hd95"), ("precision", "precision"), ("recall", "recall")]:
        v = g[col].astype(float)
        out[f"{name}_mean"] = float(v.mean()) if v.notna().any() else np.nan
        out[f"{name}_sd"] = _sd(v)
    return out


def order_models(models, reference, configured=None) -> list[str]:
    """Reference first, then the configured order (or sorted)."""
    present = list(dict.fromkeys(models))
    order = [m for m in (configured or []) if m in present] + sorted(m for m in present if m not in (configured or []))
    if reference in order:
        order.remove(reference)
        order.insert(0, reference)
    return order


def _comparison_lookup(comparisons: pd.DataFrame, scope: str):
    c = comparisons[comparisons.scope == scope]
    return {(r.model, r.metric): r for r in c.itertuples()}


def modality_table(per_case, comparisons, volume, modality, reference, configured=None) -> Table:
    g = per_case[per_case.modality == modality]
    comp = comparisons[comparisons.modality == modality]
    vol = volume[volume.modality == modality].set_index("model") if len(volume) else pd.DataFrame()
    lookup = _comparison_lookup(comp, "all")
    rows, shown = [], []
    for model in order_models(g.model, reference, configured):
        d = describe(g[g.model == model])
        row = dict(modality=modality, model=model, is_reference=model == reference, **d,
                   vol_r2_pearson=vol.r2_pearson.get(model, np.nan) if len(vol) else np.nan,
                   vol_r2_identity=vol.r2_identity.get(model, np.nan) if len(vol) else np.nan)
        for metric, short in (("dice", "dice"), ("hd95_mm", "hd95")):
            c = lookup.get((model, metric))
            row[f"p_{short}"] = c.p if c is not None else np.nan
            row[f"p_{short}_holm"] = c.p_holm if c is not None else np.nan
            row[f"n_pairs_{short}"] = c.n_pairs if c is not None else np.nan
        row["data_source"] = ",".join(sorted(set(g.data_source.astype(str))))
        rows.append(row)
        ref_cell = "reference" if model == reference else None
        shown.append({
            "Model": model + (" (ref.)" if model == reference else ""),
            "n": d["n"],
            "Dice (%)": pm(d["dice_mean"], d["dice_sd"], 1, 100),
            "HD95 (mm)": pm(d["hd95_mean"], d["hd95_sd"], 2),
            "Precision (%)": pm(d["precision_mean"], d["precision_sd"], 1, 100),
            "Recall (%)": pm(d["recall_mean"], d["recall_sd"], 1, 100),
            "Volume r²": "n/a" if pd.isna(row["vol_r2_pearson"]) else f"{row['vol_r2_pearson']:.3f}",
            "p Dice (Holm)": ref_cell or fmt_p(row["p_dice_holm"]),
            "p HD95 (Holm)": ref_cell or fmt_p(row["p_hd95_holm"]),
            "empty pred.": d["n_empty_pred"],
            "HD95 undef.": d["n_hd95_undefined"],
        })
    data = pd.DataFrame(rows)
    n_tests = int(comp[comp.scope == "all"].p.notna().sum())
    notes = [
        "Mean ± sd over cases (sd with ddof=1). Dice = 2|P∩R|/(|P|+|R|); HD95 = max of the two directed 95th "
        "percentiles of surface distances in mm (MONAI's definition); precision = |P∩R|/|P|; recall = |P∩R|/|R|.",
        "Volume r² = squared Pearson correlation of predicted and reference volume (the paper's R²); the "
        "identity-line R² is in the volume_agreement table.",
    ]
    if data.empty or len(data) < 2:
        notes.append(f"Only one model ({', '.join(data.model) if len(data) else 'none'}): no comparisons with a "
                     "reference model.")
    else:
        notes.append(f"p: two-sided paired t-test (scipy ttest_rel) against the reference model {reference} over the "
                     f"cases both models have, Holm-corrected across the {n_tests} comparisons of this table.")
    notes.append(EMPTY_RULE)
    synthetic = "synthetic" in ",".join(g.data_source.astype(str))
    return Table(f"modality_{modality}", f"{modality}: segmentation results per model", data, pd.DataFrame(shown),
                 notes, synthetic)


def cross_center_table(per_case, comparisons, reference, configured=None) -> Table:
    rows, shown = [], []
    models = order_models(per_case.model, reference, configured)
    for (modality, center), g in per_case.groupby(["modality", "center"], sort=True):
        lookup = _comparison_lookup(comparisons[comparisons.modality == modality], center)
        role = "/".join(sorted(set(g.role)))
        row = dict(modality=modality, center=center, role=role)
        disp = {"Modality": modality, "Center": center, "Role": role}
        for model in models:
            gm = g[g.model == model]
            d = describe(gm) if len(gm) else dict(n=0, dice_mean=np.nan, dice_sd=np.nan, hd95_mean=np.nan,
                                                  hd95_sd=np.nan)
            row.update({f"{model}_n": d["n"], f"{model}_dice_mean": d["dice_mean"], f"{model}_dice_sd": d["dice_sd"],
                        f"{model}_hd95_mean": d["hd95_mean"], f"{model}_hd95_sd": d["hd95_sd"],
                        f"{model}_n_empty_pred": d.get("n_empty_pred", 0),
                        f"{model}_n_hd95_undefined": d.get("n_hd95_undefined", 0)})
            disp.update({f"{model} n": d["n"], f"{model} Dice (%)": pm(d["dice_mean"], d["dice_sd"], 1, 100),
                         f"{model} HD95 (mm)": pm(d["hd95_mean"], d["hd95_sd"], 2)})
            if model != reference:
                for metric, short in (("dice", "Dice"), ("hd95_mm", "HD95")):
                    c = lookup.get((model, metric))
                    row[f"{model}_p_{metric.split('_')[0]}_holm"] = c.p_holm if c is not None else np.nan
                    disp[f"{model} p {short}"] = fmt_p(c.p_holm) if c is not None else "n/a"
        rows.append(row)
        shown.append(disp)
    notes = [f"A row per center; role train-cv = out-of-fold predictions of {cv_name(per_case)}, external = "
             "never trained on, segmented by the fold ensemble. Dice (%) and HD95 (mm): mean ± sd over the "
             "center's cases."]
    if len(models) > 1:
        notes.append(f"p: paired t-test against the reference model {reference} within the center, Holm-corrected "
                     "across all comparisons of this table (every center x model x metric).")
    else:
        notes.append("Only one model: no comparisons with a reference model.")
    counts = "; ".join(f"{m}: {int((per_case[per_case.model == m]['empty'] == 'pred').sum())} empty predictions, "
                       f"{int(per_case[per_case.model == m].hd95_mm.isna().sum())} cases without HD95" for m in models)
    notes.append(EMPTY_RULE.replace(", counted in 'HD95 undef.'", "").replace(", counted in 'empty pred.'", "")
                 + f" Counts ({counts}) per center are in the CSV.")
    synthetic = "synthetic" in ",".join(per_case.data_source.astype(str))
    return Table("cross_center", "Results per center", pd.DataFrame(rows), pd.DataFrame(shown), notes, synthetic, 3)


def agreement_summary(agreement: pd.DataFrame, margin_mm=None) -> Table:
    rows, shown = [], []
    for (modality, kind), g in agreement.groupby(["modality", "kind"], sort=True):
        for region in ("volume", "box"):
            k = g[f"kappa_{region}"].astype(float)
            row = dict(modality=modality, kind=kind, region=region, n_cases=len(g), kappa_mean=float(k.mean()),
                       kappa_sd=_sd(k), kappa_pooled=pooled_kappa(g, region), rater_dice_mean=float(g.dice.mean()),
                       rater_dice_sd=_sd(g.dice), box_margin_mm=float(g.box_margin_mm.iloc[0]))
            rows.append(row)
            shown.append({"Modality": modality, "Agreement": KIND_NAMES.get(kind, kind),
                          "Region": REGION_NAMES[region] + (f" (± {row['box_margin_mm']:g} mm)" if region == "box"
                                                            else ""),
                          "n": len(g), "Cohen's κ": pm(row["kappa_mean"], row["kappa_sd"], 3),
                          "κ pooled": "n/a" if pd.isna(row["kappa_pooled"]) else f"{row['kappa_pooled']:.3f}",
                          "Rater Dice": pm(row["rater_dice_mean"], row["rater_dice_sd"], 3)})
    columns = ["modality", "kind", "region", "n_cases", "kappa_mean", "kappa_sd", "kappa_pooled", "rater_dice_mean",
               "rater_dice_sd", "box_margin_mm"]
    notes = [
        "Cohen's κ computed voxel-wise from the 2x2 confusion counts of the reference label and the second "
        "annotation (equals sklearn's cohen_kappa_score). Intra-rater: the same rater annotated the case again "
        "(label_repeat); inter-rater: a second rater (label_rater2).",
        "κ depends on the region: 'whole volume' counts every background voxel as agreement (κ close to Dice); "
        "'union box' is the bounding box of both annotations grown by the margin on every side. κ mean ± sd over "
        "cases; κ pooled from the summed counts. Rater Dice does not depend on the region.",
    ]
    if agreement.empty:
        notes.insert(0, "No case has a second annotation (manifest columns label_rater2 / label_repeat are empty): "
                        "no agreement to report.")
    synthetic = "synthetic" in ",".join(agreement.data_source.astype(str)) if len(agreement) else False
    return Table("agreement", "Intra- and inter-rater agreement of the reference annotations",
                 pd.DataFrame(rows, columns=columns), pd.DataFrame(shown), notes, synthetic, 3)


def paired_tests_table(comparisons: pd.DataFrame, reference: str, synthetic: bool) -> Table:
    shown = pd.DataFrame({
        "Modality": comparisons.modality, "Scope": comparisons.scope, "Metric": comparisons.metric,
        "Model": comparisons.model, "vs": comparisons.reference, "n": comparisons.n_pairs,
        "Mean diff. [95% CI]": [
            "n/a" if pd.isna(r.mean_diff) else
            f"{r.mean_diff:.4g} [{r.ci_low:.4g}, {r.ci_high:.4g}]" if pd.notna(r.ci_low) else f"{r.mean_diff:.4g}"
            for r in comparisons.itertuples()],
        "t": ["n/a" if pd.isna(t) else f"{t:.3f}" for t in comparisons.t],
        "p": [fmt_p(p) for p in comparisons.p], "p (Holm)": [fmt_p(p) for p in comparisons.p_holm],
        "Holm family": comparisons.family, "Note": comparisons.note.fillna(""),
    })
    notes = [f"Paired t-tests (scipy ttest_rel, two-sided) of each model against the reference model {reference}; "
             "difference = model − reference (Dice as a fraction, HD95 in mm); cases paired by case id. Holm "
             "correction (statsmodels multipletests) within each family: <modality>/all = the modality table, "
             "<modality>/centers = the cross-center table."]
    if comparisons.empty:
        notes.insert(0, "Only one model is configured: there is no model to compare with the reference.")
    return Table("paired_tests", "Paired comparisons with the reference model", comparisons, shown, notes, synthetic,
                 5)


def volume_agreement_table(volume: pd.DataFrame, synthetic: bool) -> Table:
    shown = pd.DataFrame({
        "Modality": volume.modality, "Model": volume.model, "n": volume.n,
        "r² (Pearson)": [f"{v:.3f}" if pd.notna(v) else "n/a" for v in volume.r2_pearson],
        "Slope": [f"{v:.3f}" if pd.notna(v) else "n/a" for v in volume.slope],
        "Intercept (mL)": [f"{v:.2f}" if pd.notna(v) else "n/a" for v in volume.intercept],
        "R² (identity)": [f"{v:.3f}" if pd.notna(v) else "n/a" for v in volume.r2_identity],
        "Bias (mL)": [f"{v:.2f}" if pd.notna(v) else "n/a" for v in volume.bias_ml],
        "LoA (mL)": [f"[{a:.2f}, {b:.2f}]" if pd.notna(a) else "n/a" for a, b in zip(volume.loa_low_ml,
                                                                                   volume.loa_high_ml)],
        "p pred vs ref (Holm)": [fmt_p(p) for p in volume.p_holm],
    })
    notes = ["r² (Pearson) = squared Pearson correlation of predicted and reference volume (the paper's R²); slope "
             "and intercept of the least-squares line pred = slope·ref + intercept; R² (identity) = coefficient of "
             "determination against the line pred = ref (sklearn r2_score(ref, pred)), which also penalises bias.",
             "Bland–Altman: bias = mean(pred − ref); limits of agreement (LoA) = bias ± 1.96·sd, sd with ddof=1. "
             "p: paired t-test of predicted against reference volume, Holm-corrected across the models of a "
             "modality."]
    return Table("volume_agreement", "Volume agreement: predicted vs reference pancreas volume", volume, shown, notes,
                 synthetic, 2)


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


def _read_all(paths, columns) -> pd.DataFrame:
    """Concatenate statistics tables; a missing column or an unreadable file is an error naming it."""
    frames = []
    for p in paths or []:
        try:
            df = pd.read_csv(p, sep="\t", keep_default_na=False, na_values=["", "nan", "NaN"])
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise InputError(p, f"cannot be read as a statistics table ({exc})") from None
        missing = set(columns) - set(df.columns)
        if missing:
            raise InputError(p, f"lacks columns {sorted(missing)[:5]} (written by another version?)")
        if len(df):
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def build_tables(per_case, comparisons, volume, agreement, reference, modalities, configured=None) -> list[Table]:
    synthetic = "synthetic" in ",".join(per_case.data_source.astype(str))
    tables = [modality_table(per_case, comparisons, volume, m, reference, configured) for m in modalities]
    tables.append(cross_center_table(per_case, comparisons, reference, configured))
    tables.append(agreement_summary(agreement))
    tables.append(paired_tests_table(comparisons, reference, synthetic))
    tables.append(volume_agreement_table(volume, synthetic))
    return tables


def main(argv=None):
    ap = argparse.ArgumentParser(description="Paper tables (CSV, Markdown, LaTeX, HTML).")
    ap.add_argument("--metrics", nargs="+", required=True, help="per-center metrics.tsv of every modality x model")
    ap.add_argument("--comparisons", nargs="*", default=[], help="stats comparisons.tsv per modality")
    ap.add_argument("--volume", nargs="*", default=[], help="stats volume.tsv per modality")
    ap.add_argument("--agreement", nargs="*", default=[], help="agreement tsv per modality")
    ap.add_argument("--reference", required=True)
    ap.add_argument("--models", nargs="*", default=None, help="configured model order")
    ap.add_argument("--modalities", nargs="+", required=True)
    ap.add_argument("--study", default="study")
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        per_case = read_metrics(args.metrics)
        comparisons = _read_all(args.comparisons, COMPARISON_COLUMNS)
        volume = _read_all(args.volume, VOLUME_COLUMNS)
        agreement = _read_all(args.agreement, AGREEMENT_COLUMNS)
    except InputError as exc:
        log.error("%s", exc)
        return 1
    for df, col in ((comparisons, "note"), (volume, "note")):
        df[col] = [("" if pd.isna(v) else str(v)) for v in df[col]]
    tables = build_tables(per_case, comparisons, volume, agreement, args.reference, args.modalities, args.models)
    for t in tables:
        for path in write_outputs(t, args.out_dir, args.study):
            log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
