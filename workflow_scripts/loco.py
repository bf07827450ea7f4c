"""Cross-center generalisation table: k-fold CV (in-distribution) vs leave-one-center-out.

For each modality x model x training center C: the same cases of C segmented two ways, by the
CV fold that held them out (trained on every center, C included) and by the model trained
without any case of C. Dice and HD95 mean ± sd of both, the mean difference (held-out − CV) and
a paired t-test over C's cases, Holm-corrected across the table's tests (paired_ttest/holm from
stats.py). Output: ``<out-dir>/loco.{csv,md,tex,html}`` in the paper tables' formats.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import pandas as pd

from .paper_tables import Table, cv_name, describe, fmt_p, pm, write_outputs
from .stats import _pairs, holm, paired_ttest, read_metrics

log = logging.getLogger(__name__)
METRICS = (("dice", "dice", "Dice (%)", 1, 100.0), ("hd95_mm", "hd95", "HD95 (mm)", 2, 1.0))  # column, key, ...


def loco_table(cv: pd.DataFrame, loco: pd.DataFrame) -> Table:
    rows, shown, tests = [], [], []
    cv_label = cv_name(cv)  # "5-fold CV" from the metrics' setting column
    for (modality, model, center), held in loco.groupby(["modality", "model", "center"], sort=True):
        ind = cv[(cv.modality == modality) & (cv.model == model) & (cv.center == center)]
        row = dict(modality=modality, model=model, center=center)
        disp = {"Modality": modality, "Model": model, "Center": center, "n": 0}
        a, b = describe(ind), describe(held)
        for metric, key, label, digits, scale in METRICS:
            x, y, _ = _pairs(held, ind, metric)  # held-out-center vs CV, paired by case
            test = paired_ttest(x, y)
            row.update({"n": len(x), f"{key}_cv_mean": a[f"{key}_mean"], f"{key}_cv_sd": a[f"{key}_sd"],
                        f"{key}_loco_mean": b[f"{key}_mean"], f"{key}_loco_sd": b[f"{key}_sd"],
                        f"{key}_diff": test["mean_diff"], f"{key}_p": test["p"]})
            disp["n"] = len(x)
            disp[f"{label} {cv_label}"] = pm(a[f"{key}_mean"], a[f"{key}_sd"], digits, scale)
            disp[f"{label} held-out center"] = pm(b[f"{key}_mean"], b[f"{key}_sd"], digits, scale)
            disp[f"Δ {label}"] = f"{test['mean_diff'] * scale:+.{digits}f}" if np.isfinite(test["mean_diff"]) else "n/a"
            tests.append((len(rows), key))
        rows.append(row)
        shown.append(disp)
    data, display = pd.DataFrame(rows), pd.DataFrame(shown)
    if len(data):
        for key in ("dice", "hd95"):
            data[f"{key}_p_holm"] = np.nan
        p_all = [data.at[i, f"{k}_p"] for i, k in tests]
        adjusted = holm(p_all)
        for (i, k), p in zip(tests, adjusted):
            data.at[i, f"{k}_p_holm"] = p
        for i in range(len(display)):
            display.loc[i, "p Dice"] = fmt_p(data.at[i, "dice_p_holm"])
            display.loc[i, "p HD95"] = fmt_p(data.at[i, "hd95_p_holm"])
    notes = [f"Each training center's cases segmented by the {cv_label} model that held them out (trained with the "
             "other cases of that center) and by the model trained without the center (leave-one-center-out).",
             "Δ = held-out − CV, paired over the center's cases; p: paired t-test, Holm-corrected across every test "
             "of this table."]
    synthetic = "synthetic" in ",".join(loco.data_source.astype(str))
    return Table("loco", f"Cross-center generalisation: {cv_label} vs held-out center", data, display, notes,
                 synthetic, 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description="k-fold CV vs leave-one-center-out table.")
    ap.add_argument("--cv", nargs="+", required=True, help="per-center metrics of the CV (out-of-fold) masks")
    ap.add_argument("--loco", nargs="+", required=True, help="per-center metrics of the held-out-center masks")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--study", default="study")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    table = loco_table(read_metrics(args.cv), read_metrics(args.loco))
    write_outputs(table, args.out_dir, args.study)
    for r in table.data.itertuples():
        log.info("%s %s %s: Dice CV %.3f vs held-out %.3f (p Holm %.3g)", r.modality, r.model, r.center,
                 r.dice_cv_mean, r.dice_loco_mean, r.dice_p_holm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
