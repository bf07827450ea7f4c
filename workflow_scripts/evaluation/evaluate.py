"""Evaluate predicted masks against reference labels: a per-case metrics table.

Two uses:
- the workflow: ``--cases`` (a center's manifest rows), ``--pred`` (its mask folder) and
  ``--setting`` (settings.SETTINGS; ``--n-folds`` for cv/external) give a table with the
  manifest's case, modality, center, participant_id and role columns, the setting and n_folds;
- any two folders of NIfTI masks matched by file name, like nnU-Net's evaluate_folder:
  ``python -m workflow_scripts.evaluate --pred DIR --ref DIR --out FILE.csv``.
Masks are read with SimpleITK; spacing comes from the reference, reversed to array order. A
prediction not on its reference's grid is an error naming the file (never silently resampled).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from workflow_scripts.common.atomic import write_table
from workflow_scripts.common.errors import InputError
from workflow_scripts.evaluation.metrics import NSD_TOLERANCE_MM, case_metrics
from workflow_scripts.data.image_checks import read_image
from workflow_scripts.evaluation.settings import SETTINGS

log = logging.getLogger(__name__)

COLUMNS = ["case", "dice", "nsd", "hd95_mm", "hd_max_mm", "assd_mm", "precision", "recall", "vol_pred_ml", "vol_ref_ml",
           "vol_diff_ml", "tp", "fp", "fn", "empty"]
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def evaluate_pair(pred_path, ref_path, origin_tol_mm=1e-2, nsd_tolerance_mm=NSD_TOLERANCE_MM) -> dict:
    pred_img, ref_img = read_image(pred_path), read_image(ref_path)
    if pred_img.GetSize() != ref_img.GetSize():
        raise InputError(pred_path, f"size {pred_img.GetSize()} differs from reference {ref_img.GetSize()} ({ref_path})")
    if not (np.allclose(pred_img.GetSpacing(), ref_img.GetSpacing(), atol=1e-3 * max(ref_img.GetSpacing()))
            and np.allclose(pred_img.GetOrigin(), ref_img.GetOrigin(), atol=origin_tol_mm)
            and np.allclose(pred_img.GetDirection(), ref_img.GetDirection(), atol=1e-3)):
        raise InputError(pred_path, f"geometry (spacing/origin/direction) differs from reference {ref_path}")
    pred = sitk.GetArrayViewFromImage(pred_img) > 0
    ref = sitk.GetArrayViewFromImage(ref_img) > 0
    return case_metrics(pred, ref, ref_img.GetSpacing()[::-1], nsd_tolerance_mm)


def case_name(path: Path) -> str:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def evaluate_folders(pred_dir, ref_dir, nsd_tolerance_mm=NSD_TOLERANCE_MM) -> pd.DataFrame:
    """Match NIfTI masks by file name; a reference without prediction is an error."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    refs = {case_name(p): p for p in sorted(ref_dir.iterdir()) if p.name.endswith(NIFTI_SUFFIXES)}
    preds = {case_name(p): p for p in sorted(pred_dir.iterdir()) if p.name.endswith(NIFTI_SUFFIXES)}
    if not refs:
        raise InputError(ref_dir, "no NIfTI reference masks (.nii/.nii.gz) found")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise InputError(pred_dir, f"no prediction for {len(missing)} reference cases, e.g. {missing[:3]}")
    extra = sorted(set(preds) - set(refs))
    if extra:
        log.warning("%d predictions have no reference and are not evaluated: %s", len(extra), extra[:5])
    rows = []
    for i, case in enumerate(refs, 1):
        rows.append({"case": case, **evaluate_pair(preds[case], refs[case], nsd_tolerance_mm=nsd_tolerance_mm)})
        if i % 20 == 0:
            log.info("evaluated %d/%d", i, len(refs))
    return pd.DataFrame(rows, columns=COLUMNS)


def evaluate_cases(cases: pd.DataFrame, pred_dir, model: str, setting: str, n_folds=None,
                   nsd_tolerance_mm=NSD_TOLERANCE_MM) -> pd.DataFrame:
    """Metrics for manifest rows, each against <pred_dir>/<case_id>.nii.gz.

    `setting` is one of settings.SETTINGS; `n_folds` the fold count of the cross-validation the
    masks come from (cv: out-of-fold; external: the ensemble of those folds), else empty.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting {setting!r} is not one of {SETTINGS}")
    if "participant_id" not in cases or (cases["participant_id"].fillna("") == "").any():
        raise InputError(pred_dir, "every case needs a participant_id (the manifest's participant column)")
    rows = []
    for r in cases.sort_values("case_id").itertuples():
        pred = Path(pred_dir) / f"{r.case_id}.nii.gz"
        m = evaluate_pair(pred, r.label, nsd_tolerance_mm=nsd_tolerance_mm)
        rows.append({"case": r.case_id, **m})
    df = pd.DataFrame(rows, columns=COLUMNS)
    meta = cases.set_index("case_id").loc[df.case]
    for pos, col in enumerate(["modality", "center", "participant_id", "role", "data_source"]):
        df.insert(1 + pos, col, meta[col].fillna("").values if col in meta else "")
    df.insert(2, "model", model)
    df.insert(3, "setting", setting)
    df.insert(4, "n_folds", "" if n_folds is None else int(n_folds))
    df["nsd_tolerance_mm"] = float(nsd_tolerance_mm)
    return df


def authors_validation(df: pd.DataFrame, bundle) -> list[str]:
    """Per case of a released model: 'yes' when the published folder lists it among the cases its
    training held out (bundle.json `v1_validation_cases`, any fold), 'no' when it lists others, ''
    when the bundle lists none (then no fair subset can be read off)."""
    from workflow_scripts.common.safe_archive import read_top_member

    listed = json.loads(read_top_member(bundle, "bundle.json")).get("v1_validation_cases") or {}
    held_out = {c for fold in listed.values() for c in fold.get("cases", [])}
    if not held_out:
        return [""] * len(df)
    return ["yes" if c in held_out else "no" for c in df.case]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Per-case Dice, NSD, HD95 (mm), precision, recall and volumes.")
    ap.add_argument("--pred", required=True, help="folder of predicted masks")
    ap.add_argument("--ref", help="folder of reference masks (matched by file name)")
    ap.add_argument("--cases", help="manifest TSV (workflow use; reference = its label column)")
    ap.add_argument("--model", default="")
    ap.add_argument("--setting", choices=SETTINGS, help="how the masks were made (workflow use, with --cases)")
    ap.add_argument("--n-folds", type=int, help="fold count of the cross-validation (settings cv and external)")
    ap.add_argument("--nsd-tolerance-mm", type=float, default=NSD_TOLERANCE_MM,
                    help=f"tolerance of the normalised surface Dice (default {NSD_TOLERANCE_MM:g} mm)")
    ap.add_argument("--bundle", help="released weights: the bundle, to mark the scans its training held out "
                                     "(column authors_validation)")
    ap.add_argument("--out", required=True, help="output table (.csv or .tsv)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if bool(args.ref) == bool(args.cases):
        ap.error("give exactly one of --ref and --cases")
    if args.cases and not args.setting:
        ap.error("--cases needs --setting (cv, external, loco, released, prompted)")
    if args.setting in ("cv", "external") and not args.n_folds:
        ap.error(f"--setting {args.setting} needs --n-folds")
    try:
        if args.ref:
            df = evaluate_folders(args.pred, args.ref, args.nsd_tolerance_mm)
        else:
            df = evaluate_cases(pd.read_csv(args.cases, sep="\t", dtype=str, keep_default_na=False), args.pred,
                                args.model, args.setting, args.n_folds if args.setting in ("cv", "external") else None,
                                args.nsd_tolerance_mm)
        if args.bundle:
            df["authors_validation"] = authors_validation(df, args.bundle)
    except InputError as exc:
        log.error("%s", exc)
        return 1
    write_table(df, args.out, float_format="%.6g")
    n_empty = int((df["empty"] != "").sum())
    log.info("%d cases: mean Dice %.3f, median HD95 %.2f mm; %d with an empty mask (rule in metrics.py)",
             len(df), df.dice.mean(), df.hd95_mm.median(), n_empty)
    return 0


if __name__ == "__main__":
    sys.exit(main())
