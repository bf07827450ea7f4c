"""Per-case segmentation metrics: Dice, NSD, HD95, max HD, ASSD, precision, recall, volumes.

Definitions (docs/facts.md §6; they equal MONAI's ``compute_hausdorff_distance(percentile=95)`` and
Metrics Reloaded):
- surface = mask XOR erosion(mask), erosion with 6-connectivity (face neighbours);
- distances are between surface-voxel centres, in mm, with the spacing in ARRAY order (z, y, x);
- HD95 = max of the two directed 95th percentiles (numpy's linear interpolation); max HD = max
  of the two directed maxima; ASSD = mean of all directed distances of both surfaces pooled;
- NSD (normalised surface Dice) at tolerance tau (mm) on the same surfaces and distances: the
  fraction of the surface voxels of both masks that lie within tau of the other surface,
  (|{p in S_P: d(p, S_R) <= tau}| + |{r in S_R: d(r, S_P) <= tau}|) / (|S_P| + |S_R|). Every
  surface voxel counts once; the DeepMind "surface-distance" version instead weights surface
  elements (surfels on voxel faces) by their area, so the two differ slightly on the same masks.
Speed: both masks are cropped to the bounding box of their union (plus a one-voxel margin)
before the two Euclidean distance transforms; the values are identical to the full-volume ones.

Empty masks follow one rule, reported in the ``empty`` column:
- reference and prediction both empty ("both"): Dice, precision and recall are 1, distances
  and NSD are undefined (NaN) and the tables count such cases instead of averaging over them;
- exactly one empty ("pred" or "ref"): Dice, precision, recall and NSD are 0 and every distance
  is the worst case, the diagonal of the image in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_FACE = ndimage.generate_binary_structure(3, 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE, border_value=0)


def _union_box(a: np.ndarray, b: np.ndarray, margin: int = 1):
    coords = np.argwhere(a | b)
    lo = np.maximum(coords.min(0) - margin, 0)
    hi = np.minimum(coords.max(0) + margin + 1, a.shape)
    return tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (pred->ref, ref->pred) in mm; both masks must be non-empty."""
    box = _union_box(pred, ref)
    p, r = pred[box], ref[box]
    # The one-voxel margin keeps the crop edge off the masks, so erosion sees the same
    # neighbourhood as in the full volume (the crop only touches a mask at the image's own edge).
    sp, sr = _surface(p), _surface(r)
    dt_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return dt_r[sp], dt_p[sr]


NSD_TOLERANCE_MM = 2.0


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing, nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> dict:
    """All per-case metrics for binary masks on the same grid; `spacing` in array (z, y, x) order."""
    pred = np.asarray(pred).astype(bool, copy=False)
    ref = np.asarray(ref).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    fp, fn = n_pred - tp, n_ref - tp
    out = dict(tp=tp, fp=fp, fn=fn, vol_pred_ml=n_pred * voxel_ml, vol_ref_ml=n_ref * voxel_ml)
    out["vol_diff_ml"] = out["vol_pred_ml"] - out["vol_ref_ml"]
    if n_pred == 0 and n_ref == 0:
        out.update(dice=1.0, precision=1.0, recall=1.0, nsd=np.nan, hd95_mm=np.nan, hd_max_mm=np.nan,
                   assd_mm=np.nan, empty="both")
        return out
    if n_pred == 0 or n_ref == 0:
        worst = float(np.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(pred.shape, spacing))))
        out.update(dice=0.0, precision=0.0, recall=0.0, nsd=0.0, hd95_mm=worst, hd_max_mm=worst, assd_mm=worst,
                   empty="pred" if n_pred == 0 else "ref")
        return out
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    tol = float(nsd_tolerance_mm) + 1e-9  # rounding slack: a distance of exactly tau counts as within
    out.update(
        dice=2 * tp / (n_pred + n_ref),
        precision=tp / n_pred,
        recall=tp / n_ref,
        nsd=float((np.count_nonzero(d_pr <= tol) + np.count_nonzero(d_rp <= tol)) / (d_pr.size + d_rp.size)),
        hd95_mm=float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        hd_max_mm=float(max(d_pr.max(), d_rp.max())),
        assd_mm=float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)),
        empty="",
    )
    return out
