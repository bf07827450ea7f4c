"""Cross-validation folds grouped by participant and balanced across centers.

No participant ever sits in both the training and the validation part of a fold (a follow-up
scan of a validation participant would leak otherwise). Folds come from scikit-learn's
StratifiedGroupKFold (stratified by center, grouped by participant) with a fixed seed, on rows
sorted by case id, so the same cases always give the same folds, byte for byte.
Output: nnU-Net's splits_final.json format (a list of {"train": [...], "val": [...]}) and a
readable TSV (case, participant, center, fold, stratified_by: "center", or "none: ..." naming the
centers with fewer participants than folds, where stratification is switched off and logged).
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from workflow_scripts.common.atomic import write_table, write_text

log = logging.getLogger(__name__)


def make_folds(cases: pd.DataFrame, n_folds: int = 5, seed: int = 12345) -> pd.DataFrame:
    """Return `cases` (case_id, participant_id, center) with a `fold` column."""
    df = cases[["case_id", "participant_id", "center"]].sort_values("case_id").reset_index(drop=True)
    if df.case_id.duplicated().any():
        raise ValueError(f"duplicate case ids: {sorted(df.case_id[df.case_id.duplicated()])[:5]}")
    n_groups = df.participant_id.nunique()
    if n_groups < n_folds:
        raise ValueError(f"{n_groups} participants cannot fill {n_folds} folds; add cases or lower `folds`")
    # Stratify by center only where every center can reach every fold; else plain grouping, said in
    # the log and in the table's `stratified_by` column (never silently).
    per_center = df.groupby("center").participant_id.nunique()
    small = per_center[per_center < n_folds]
    if small.empty:
        strata, stratified_by = df.center, "center"
    else:
        strata = pd.Series("all", index=df.index)
        stratified_by = "none: " + ", ".join(f"{c} has {n} participants" for c, n in small.items()) + \
            f" (< {n_folds} folds)"
        log.warning("folds are NOT stratified by center: %s; participants are still grouped",
                    stratified_by.removeprefix("none: "))
    folds = np.full(len(df), -1)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(splitter.split(df, strata, groups=df.participant_id)):
        folds[val_idx] = k
    df["fold"] = folds
    df["stratified_by"] = stratified_by
    return df


def to_nnunet_splits(folds: pd.DataFrame) -> list[dict]:
    n = int(folds.fold.max()) + 1
    return [{"train": sorted(folds.case_id[folds.fold != k]), "val": sorted(folds.case_id[folds.fold == k])}
            for k in range(n)]


def leave_one_center_out(cases: pd.DataFrame) -> list[dict]:
    """One split per training center (sorted): train on the other centers, validate on it."""
    out = []
    for center in sorted(cases.center.unique()):
        held = cases.center == center
        out.append({"center": center, "train": sorted(cases.case_id[~held]), "val": sorted(cases.case_id[held])})
    return out


def check_grouping(folds: pd.DataFrame) -> None:
    """Raise if a participant appears in more than one fold."""
    spread = folds.groupby("participant_id").fold.nunique()
    leaky = spread[spread > 1]
    if len(leaky):
        raise AssertionError(f"participants split across folds: {list(leaky.index)[:5]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Participant-grouped cross-validation folds.")
    ap.add_argument("--cases", nargs="+", required=True, help="per-center manifest TSVs (training centers)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-tsv", help="readable fold table (not written for --loco)")
    ap.add_argument("--loco", action="store_true", help="leave-one-center-out splits instead of k folds")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cases = pd.concat([pd.read_csv(f, sep="\t", dtype=str) for f in args.cases], ignore_index=True)
    if args.loco:
        splits = leave_one_center_out(cases)
        for k, s in enumerate(splits):
            log.info("fold %d leaves out %s: %d training, %d held-out cases", k, s["center"], len(s["train"]),
                     len(s["val"]))
        write_text(args.out_json, json.dumps(splits, indent=1))
        return
    if not args.out_tsv:
        ap.error("--out-tsv is required for k-fold splits")
    folds = make_folds(cases, args.folds, args.seed)
    check_grouping(folds)
    for k, part in folds.groupby("fold"):
        log.info("fold %d: %d validation cases, %d participants, centers %s", k, len(part),
                 part.participant_id.nunique(), {c: int(n) for c, n in part.center.value_counts().sort_index().items()})
    write_table(folds, args.out_tsv)
    write_text(args.out_json, json.dumps(to_nnunet_splits(folds), indent=1))


if __name__ == "__main__":
    main()
