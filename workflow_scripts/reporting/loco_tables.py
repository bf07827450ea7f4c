"""Cross-center generalisation table: cross-validation (cv) vs leave-one-center-out (loco).

For each modality x model x training center C: the same scans of C segmented two ways, by the CV
fold that held them out (trained on every center, C included) and by the model trained without
any scan of C. The numbers come from the statistics job (stats.py): the descriptives of both
settings and the cross-setting comparison "loco vs cv" of the same model on identical scans
(participant unit by default, t-test and Wilcoxon with Holm within modality / loco vs cv / unit /
per center, or all centers for the row "all"). Output: ``<out-dir>/loco.{csv,md,tex,html}``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import pandas as pd

from workflow_scripts.common.errors import InputError
from workflow_scripts.reporting.paper_tables import (CI_NOTE, STATS_COLUMNS, Context, Table, read_stats_tables, est_ci, fmt_p, n_cell, pm_ci,
                           ungrouped_from_descriptives, write_outputs)
from workflow_scripts.evaluation.settings import cv_label

log = logging.getLogger(__name__)
METRICS = (("dice", "dice", "Dice (%)", 1, 100.0), ("hd95_mm", "hd95", "HD95 (mm)*", 2, 1.0))


def loco_table(desc: pd.DataFrame, cross: pd.DataFrame, context: Context) -> Table:
    rows, shown, families = [], [], set()
    loco = desc[desc.setting == "loco"]
    comp = cross[(cross.setting == "loco") & (cross.reference_setting == "cv") & (cross.unit == context.unit)]
    for (modality, model), g in loco.groupby(["modality", "model"], sort=True):
        scopes = sorted(s for s in set(g.scope) if s != "all") + ["all"]
        for scope in scopes:
            held = g[g.scope == scope].iloc[0]
            ind = desc[(desc.modality == modality) & (desc.model == model) & (desc.setting == "cv")
                       & (desc.scope == scope)]
            ind = ind.iloc[0] if len(ind) else None
            row = dict(modality=modality, model=model, center=scope)
            disp = {"Modality": modality, "Model": model, "Center": "all centers" if scope == "all" else scope}
            for metric, key, label, digits, scale in METRICS:
                c = comp[(comp.modality == modality) & (comp.model == model) & (comp.scope == scope)
                         & (comp.metric == metric)]
                c = c.iloc[0] if len(c) else None
                col = "hd95_mm" if key == "hd95" else key
                row.update({f"{key}_cv_mean": ind[f"{col}_mean"] if ind is not None else np.nan,
                            f"{key}_cv_sd": ind[f"{col}_sd"] if ind is not None else np.nan,
                            f"{key}_loco_mean": held[f"{col}_mean"], f"{key}_loco_sd": held[f"{col}_sd"]})
                for k in ("n_pairs", "n_participants", "n_scans", "n_excluded", "mean_diff", "ci_low", "ci_high",
                          "p_t", "p_t_holm", "p_wilcoxon", "p_wilcoxon_holm"):
                    row[f"{key}_{k}"] = c[k] if c is not None else np.nan
                if c is not None:
                    families.add(c.family)
                if key == "dice":
                    disp["n (part. / scans)"] = (n_cell(c.n_participants, c.n_scans) if c is not None else "0 / 0")
                else:
                    disp["HD95 pairs (excl.)"] = (f"{int(c.n_scans)} ({int(c.n_excluded)})" if c is not None
                                                  else "n/a")
                disp[f"{label} {context.cv_label}"] = (pm_ci(ind[f"{col}_mean"], ind[f"{col}_sd"],
                                                             ind[f"{col}_ci_low"], ind[f"{col}_ci_high"], digits,
                                                             scale) if ind is not None else "n/a")
                disp[f"{label} loco"] = pm_ci(held[f"{col}_mean"], held[f"{col}_sd"], held[f"{col}_ci_low"],
                                              held[f"{col}_ci_high"], digits, scale)
                name = label.replace("*", "")
                disp[f"Δ {name} [CI]"] = (est_ci(c.mean_diff, c.ci_low, c.ci_high, digits, scale, signed=True)
                                           if c is not None else "n/a")
                disp[f"p {label.split(' ')[0]} t / W (Holm)"] = (f"{fmt_p(c.p_t_holm)} / {fmt_p(c.p_wilcoxon_holm)}"
                                                                 if c is not None else "n/a")
            rows.append(row)
            shown.append(disp)
    notes = ([context.warning] if context.warning else []) + [
        f"Each training center's scans segmented by the {context.cv_label} model that held them out (trained with "
        "the other scans of that center) and by the model trained without the center (leave-one-center-out); "
        "'all centers' pools the centers of this one setting pair (every scan is held out once in both settings).",
        "n = participants / scans of the Dice comparison; HD95 pairs = scans in the HD95 comparison (excluded: a "
        "failed prediction on either side or an undefined HD95). Mean ± sd " + CI_NOTE.format(
            n_boot=context.n_boot).replace("[..]:", "[95 % CI]:").replace(
            "; 't-CI': the t-based interval of the paired t-test", ""),
        f"Δ = loco − cv, the mean paired difference on identical scans ({context.unit} means). p: paired t-test / "
        "Wilcoxon signed-rank test, each Holm-corrected within its family: "
        + "; ".join(sorted(families) or ["none"]) + ".",
        "* HD95 mean with the worst-case convention: a failed (empty) prediction counts as the image diagonal.",
    ]
    return Table("loco", f"Cross-center generalisation: {context.cv_label} vs leave-one-center-out",
                 pd.DataFrame(rows), pd.DataFrame(shown), notes, context.synthetic, 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Cross-validation vs leave-one-center-out table (from stats tables).")
    ap.add_argument("--descriptives", nargs="+", required=True, help="stats descriptives.tsv of the loco modalities")
    ap.add_argument("--cross-setting", nargs="+", required=True, help="stats cross_setting.tsv of the same modalities")
    ap.add_argument("--unit", choices=("participant", "scan"), default="participant")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--study", default="study")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        desc = read_stats_tables(args.descriptives, STATS_COLUMNS["descriptives"], "descriptives")
        cross = read_stats_tables(args.cross_setting, STATS_COLUMNS["cross_setting"], "cross_setting")
    except InputError as exc:
        log.error("%s", exc)
        return 1
    if "loco" not in set(desc.setting):
        log.error("%s: no loco rows (leave-one-center-out metrics missing from the statistics job)",
                  args.descriptives[0])
        return 1
    sources = ",".join(desc.data_source.astype(str)) if "data_source" in desc else ""
    cv = desc[desc.setting == "cv"]
    context = Context(reference="", unit=args.unit, n_boot=args.n_boot, synthetic="synthetic" in sources,
                      warning=ungrouped_from_descriptives(desc),
                      cv_label=cv_label(cv["n_folds"]) if "n_folds" in cv else "CV")
    table = loco_table(desc, cross, context)
    write_outputs(table, args.out_dir, args.study)
    for r in table.data.itertuples():
        log.info("%s %s %s: Dice CV %.3f vs loco %.3f (p Holm t %.3g)", r.modality, r.model, r.center,
                 r.dice_cv_mean, r.dice_loco_mean, r.dice_p_t_holm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
