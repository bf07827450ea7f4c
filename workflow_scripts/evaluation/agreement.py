"""Intra- and inter-rater agreement of reference annotations: voxel-wise Cohen's kappa and Dice.

The manifest may carry extra annotations of a case (optional columns): ``label_rater2`` (a second
rater: inter-rater agreement with ``label``) and ``label_repeat`` (the same rater again:
intra-rater agreement). For each such pair this module computes, per case:

- Cohen's kappa from the voxel-wise 2x2 confusion counts (n11, n10, n01, n00):
  p_o = (n11 + n00) / n, p_e = ((n11 + n10)(n11 + n01) + (n01 + n00)(n10 + n00)) / n²,
  kappa = (p_o - p_e) / (1 - p_e). This equals ``sklearn.metrics.cohen_kappa_score`` on the
  flattened masks (tested) and is far faster. Kappa depends on the region it is computed in,
  because background voxels both raters leave empty count as agreement. Two regions are reported:
  ``volume`` (the whole image) and ``box`` (the bounding box of the union of both annotations,
  dilated by ``margin_mm`` on every side and clipped to the image). Kappa is undefined (NaN) when
  p_e = 1 (both raters label the region all one class).
- Dice between the two annotations (region independent).

The per-case confusion counts are kept so that a pooled kappa (summed counts) can be computed.
One job per modality: ``python -m workflow_scripts.agreement --cases <center tables> --out FILE``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import pandas as pd
import SimpleITK as sitk

from workflow_scripts.common.atomic import write_table
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.image_checks import read_image

log = logging.getLogger(__name__)

# Manifest column with the second annotation -> kind of agreement it measures (against `label`).
KINDS = {"label_rater2": "inter", "label_repeat": "intra"}
REGIONS = ("volume", "box")
COLUMNS = ["case", "modality", "center", "participant_id", "data_source", "kind", "annotation_a", "annotation_b",
           "dice", "vol_a_ml", "vol_b_ml", "box_margin_mm"] + [
    f"{k}_{r}" for r in REGIONS for k in ("kappa", "n11", "n10", "n01", "n00")]


def confusion_counts(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    """(n11, n10, n01, n00): both, only a, only b, neither."""
    a = np.asarray(a).astype(bool, copy=False)
    b = np.asarray(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"annotation shapes differ: {a.shape} vs {b.shape}")
    n11 = int(np.count_nonzero(a & b))
    na, nb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    n10, n01 = na - n11, nb - n11
    return n11, n10, n01, int(a.size) - n11 - n10 - n01


def kappa_from_counts(n11, n10, n01, n00) -> float:
    """Cohen's kappa of two binary raters from their 2x2 confusion counts (NaN when p_e = 1)."""
    n11, n10, n01, n00 = (float(v) for v in (n11, n10, n01, n00))
    n = n11 + n10 + n01 + n00
    if n == 0:
        return float("nan")
    po = (n11 + n00) / n
    pe = ((n11 + n10) * (n11 + n01) + (n01 + n00) * (n10 + n00)) / (n * n)
    if pe >= 1.0:
        return float("nan")
    return (po - pe) / (1.0 - pe)


def dilated_union_box(a: np.ndarray, b: np.ndarray, spacing, margin_mm: float):
    """Slices of the union's bounding box grown by `margin_mm` (per axis, in voxels rounded up)."""
    union = np.asarray(a, bool) | np.asarray(b, bool)
    if not union.any():
        return tuple(slice(0, n) for n in union.shape)
    coords = np.argwhere(union)
    grow = np.ceil(float(margin_mm) / np.asarray(spacing, float)).astype(int)
    lo = np.maximum(coords.min(0) - grow, 0)
    hi = np.minimum(coords.max(0) + grow + 1, union.shape)
    return tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))


def rater_agreement(a: np.ndarray, b: np.ndarray, spacing, margin_mm: float = 10.0) -> dict:
    """Kappa (whole volume and dilated union box), Dice and volumes of two annotations; spacing in array order."""
    a = np.asarray(a).astype(bool, copy=False)
    b = np.asarray(b).astype(bool, copy=False)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = dict(box_margin_mm=float(margin_mm))
    counts = {"volume": confusion_counts(a, b)}
    box = dilated_union_box(a, b, spacing, margin_mm)
    counts["box"] = confusion_counts(a[box], b[box])
    for region, (n11, n10, n01, n00) in counts.items():
        out.update({f"kappa_{region}": kappa_from_counts(n11, n10, n01, n00), f"n11_{region}": n11,
                    f"n10_{region}": n10, f"n01_{region}": n01, f"n00_{region}": n00})
    n11, n10, n01, _ = counts["volume"]
    na, nb = n11 + n10, n11 + n01
    out["dice"] = 2.0 * n11 / (na + nb) if na + nb else float("nan")
    out["vol_a_ml"], out["vol_b_ml"] = na * voxel_ml, nb * voxel_ml
    return out


def _read_mask(path, like: sitk.Image | None = None, like_path=None):
    img = read_image(path)
    if like is not None:
        if img.GetSize() != like.GetSize():
            raise InputError(path, f"size {img.GetSize()} differs from {like.GetSize()} of {like_path}")
        if not np.allclose(img.GetSpacing(), like.GetSpacing(), atol=1e-3 * max(like.GetSpacing())):
            raise InputError(path, f"spacing {img.GetSpacing()} differs from {like.GetSpacing()} of {like_path}")
    arr = sitk.GetArrayViewFromImage(img)
    values = set(np.unique(arr).tolist())
    if not values <= {0, 1}:
        raise InputError(path, f"annotation values must be 0/1, found {sorted(values)[:10]}")
    return img, arr > 0


def case_rows(row, margin_mm: float) -> list[dict]:
    """Agreement rows (one per extra annotation) of one manifest row."""
    out = []
    ref_img = ref = None
    for column, kind in KINDS.items():
        other = str(row.get(column, "") or "")
        if not other:
            continue
        if ref is None:
            ref_img, ref = _read_mask(row["label"])
        _, b = _read_mask(other, ref_img, row["label"])
        spacing = ref_img.GetSpacing()[::-1]  # array order (z, y, x)
        out.append(dict(case=row["case_id"], modality=row["modality"], center=row["center"],
                        participant_id=row.get("participant_id", ""), data_source=row.get("data_source", ""),
                        kind=kind, annotation_a=row["label"], annotation_b=other,
                        **rater_agreement(ref, b, spacing, margin_mm)))
    return out


def agreement_table(cases: pd.DataFrame, margin_mm: float = 10.0) -> pd.DataFrame:
    rows = []
    for row in cases.sort_values("case_id").to_dict("records"):
        rows += case_rows(row, margin_mm)
    return pd.DataFrame(rows, columns=COLUMNS)


def pooled_kappa(df: pd.DataFrame, region: str) -> float:
    """Kappa of the summed confusion counts of several cases."""
    return kappa_from_counts(*(df[f"{k}_{region}"].sum() for k in ("n11", "n10", "n01", "n00")))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Voxel-wise Cohen's kappa and Dice between raters (one modality).")
    ap.add_argument("--cases", nargs="+", required=True, help="manifest tables (per center) of one modality")
    ap.add_argument("--margin-mm", type=float, default=10.0, help="dilation of the union's bounding box (mm)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    frames = [pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False) for f in args.cases]
    cases = pd.concat(frames, ignore_index=True)
    for column in KINDS:
        if column not in cases:
            cases[column] = ""  # a manifest written before the optional columns existed
    try:
        df = agreement_table(cases, args.margin_mm)
    except InputError as exc:
        log.error("%s", exc)
        return 1
    write_table(df, args.out, float_format="%.6g")
    if df.empty:
        log.info("no extra annotations (label_rater2/label_repeat) in %d cases: empty agreement table", len(cases))
    for (kind, g) in df.groupby("kind"):
        log.info("%s-rater: %d cases, kappa (volume) %.3f, kappa (box %.0f mm) %.3f, Dice %.3f", kind, len(g),
                 g.kappa_volume.mean(), args.margin_mm, g.kappa_box.mean(), g.dice.mean())
    return 0


if __name__ == "__main__":
    sys.exit(main())
