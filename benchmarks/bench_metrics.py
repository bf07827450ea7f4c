"""Benchmark: per-case metric time on a CT-sized pair against medpy's hd95 (run by hand).

    python benchmarks/bench_metrics.py [--repeats 3] [--shape 100 512 512]

Builds a 512x512x100 (z, y, x) pair at 2.5 x 0.8 x 0.8 mm with a pancreas-sized object (~70 mL:
a curved tube, head thick, tail thin) and a prediction that differs at the border and is shifted
by a few voxels, then times
- ``workflow_scripts.evaluation.metrics.case_metrics``: ALL per-case metrics (Dice, HD95, max HD, ASSD,
  precision, recall, volumes), cropped to the union's bounding box;
- medpy's ``hd95`` alone (full-volume distance transforms), if medpy is installed (it is a
  benchmark-only dependency: ``pip install medpy``; without it that part is skipped).
It checks the HD95 against an independent implementation of the MONAI / Metrics Reloaded
definition (surface = mask XOR 6-connected erosion, nearest surface voxel by KD-tree, max of the
two directed 95th percentiles; and MONAI itself when importable), and reports how far medpy's
value (95th percentile of both directions pooled) is from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts.evaluation.metrics import case_metrics  # noqa: E402

SPACING = (2.5, 0.8, 0.8)  # array order (z, y, x), mm


def pancreas_pair(shape=(100, 512, 512), spacing=SPACING, seed=0):
    """A ~70 mL curved tube (reference) and a prediction with border errors and a small shift."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij", sparse=True)
    cz, cy, cx = (n * s / 2 for n, s in zip(shape, spacing))
    t = np.linspace(0, 1, 60)
    line = np.stack([cz - 15 + 30 * t**1.5, cy - 20 * np.sin(np.pi * t) + 10 * t, cx - 70 + 140 * t], 1)
    radius = 15 * (1 - t) + 7.5 * t
    ref = np.zeros(shape, bool)
    # Union of spheres along the centre line, each painted inside its own bounding box (cheap).
    for (pz, py, px), r in zip(line, radius):
        sl = tuple(slice(max(int((p - r) / s) - 1, 0), min(int((p + r) / s) + 2, n))
                   for p, s, n in zip((pz, py, px), spacing, shape))
        d2 = (zz[sl[0]] - pz) ** 2 + (yy[:, sl[1]] - py) ** 2 + (xx[:, :, sl[2]] - px) ** 2
        ref[sl] |= d2 <= r * r
    # Prediction: shifted by (1, 3, -2) voxels, then border patches grown/shrunk and a false-positive blob.
    pred = np.roll(ref, (1, 3, -2), axis=(0, 1, 2))
    face = ndimage.generate_binary_structure(3, 1)
    box = tuple(slice(max(s.start - 5, 0), s.stop + 5) for s in ndimage.find_objects(pred.astype(np.uint8))[0])
    sub = pred[box]
    field = ndimage.gaussian_filter(rng.standard_normal(sub.shape), 3)
    grow = ndimage.binary_dilation(sub, face, iterations=2) & (field > 0.05)
    shrink = sub & ~ndimage.binary_erosion(sub, face, iterations=2) & (field < -0.05)
    pred[box] = (sub | grow) & ~shrink
    blob = ((zz - cz - 20) ** 2 + (yy - cy - 60) ** 2 + (xx - cx + 40) ** 2) <= 6**2
    pred |= blob
    return pred, ref


def surface_points(mask, spacing):
    face = ndimage.generate_binary_structure(3, 1)
    return np.argwhere(mask & ~ndimage.binary_erosion(mask, face, border_value=0)) * np.asarray(spacing)


def hd95_reference(pred, ref, spacing):
    """MONAI's definition, independently: KD-tree nearest surface voxel, max of directed 95th percentiles."""
    sp, sr = surface_points(pred, spacing), surface_points(ref, spacing)
    d_pr = cKDTree(sr).query(sp)[0]
    d_rp = cKDTree(sp).query(sr)[0]
    return max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)), np.percentile(np.hstack([d_pr, d_rp]), 95)


def best_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times)), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[100, 512, 512], help="z y x")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    pred, ref = pancreas_pair(tuple(args.shape))
    voxel_ml = np.prod(SPACING) / 1000
    print(f"pair {tuple(args.shape)} at {SPACING} mm (z, y, x): reference {ref.sum() * voxel_ml:.1f} mL, "
          f"prediction {pred.sum() * voxel_ml:.1f} mL (built in {time.perf_counter() - t0:.1f} s)")

    best, median, ours = best_time(lambda: case_metrics(pred, ref, SPACING), args.repeats)
    print(f"case_metrics (all metrics): best {best:.3f} s, median {median:.3f} s over {args.repeats} runs; "
          f"Dice {ours['dice']:.4f}, HD95 {ours['hd95_mm']:.3f} mm, max HD {ours['hd_max_mm']:.3f} mm, "
          f"ASSD {ours['assd_mm']:.3f} mm")

    ref_hd95, pooled = hd95_reference(pred, ref, SPACING)
    print(f"MONAI definition (independent KD-tree implementation): HD95 {ref_hd95:.6f} mm; ours {ours['hd95_mm']:.6f} mm "
          f"-> {'AGREE' if abs(ref_hd95 - ours['hd95_mm']) < 1e-9 else 'DIFFER'}")
    try:
        import torch
        from monai.metrics import compute_hausdorff_distance

        m = compute_hausdorff_distance(torch.from_numpy(pred[None, None]), torch.from_numpy(ref[None, None]),
                                       percentile=95, spacing=SPACING)
        print(f"MONAI compute_hausdorff_distance(percentile=95): {float(m):.6f} mm")
    except ImportError:
        print("MONAI not installed: checked against the independent implementation of its definition only")

    try:
        from medpy.metric.binary import hd95 as medpy_hd95
    except ImportError:
        print("medpy not installed (benchmark-only dependency: pip install medpy): medpy comparison skipped")
        return 0
    m_best, m_median, m_val = best_time(lambda: medpy_hd95(pred, ref, voxelspacing=SPACING), args.repeats)
    print(f"medpy hd95 (HD95 only): best {m_best:.3f} s, median {m_median:.3f} s; HD95 {m_val:.3f} mm "
          f"(pooled-direction 95th percentile, our distances: {pooled:.3f} mm)")
    print(f"speed-up (best/best): {m_best / best:.1f}x for all metrics vs medpy's HD95 alone")
    print(f"HD95 medpy - MONAI definition: {m_val - ref_hd95:+.3f} mm ({100 * (m_val - ref_hd95) / ref_hd95:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
