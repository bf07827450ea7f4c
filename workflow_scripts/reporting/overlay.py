"""Overlay PNG of a mask on its scan: axial, coronal and sagittal slices through the mask's centre.

Both images are turned to the LPS patient orientation first, so every overlay reads the same way
whatever the scan's direction matrix: radiological convention (patient's right on the left of the
axial view, anterior up), superior up in the coronal and sagittal views, pixels drawn with their
physical aspect ratio. Drawn with matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.common.atomic import atomic_path


def mask_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """Centroid voxel (z, y, x) of the mask; the array centre when the mask is empty.

    From the mask's profile along each axis: no list of foreground voxels (np.argwhere would take
    24 bytes per voxel, hundreds of MB for a large mask on a CT)."""
    total = int(np.count_nonzero(mask))
    if total == 0:
        return tuple(int(s // 2) for s in mask.shape)
    centre = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        profile = np.count_nonzero(mask, axis=others)
        centre.append(int(round(float(np.dot(np.arange(len(profile)), profile)) / total)))
    return tuple(centre)


def _window(image: np.ndarray) -> tuple[float, float]:
    sample = np.asarray(image[:: max(1, image.shape[0] // 16)], dtype=np.float32).ravel()
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def write_overlay(image: sitk.Image, mask: sitk.Image, path, title: str = "") -> Path:
    """Write a PNG with three orthogonal slices through the mask's centre (mask in red)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    oriented = sitk.DICOMOrient(image, "LPS")
    oriented_mask = sitk.DICOMOrient(mask, "LPS")
    img = sitk.GetArrayViewFromImage(oriented)  # views: only the three slices are copied
    seg = sitk.GetArrayViewFromImage(oriented_mask)
    if img.shape != seg.shape:
        raise ValueError(f"image {img.shape} and mask {seg.shape} differ in size")
    sx, sy, sz = oriented.GetSpacing()
    cz, cy, cx = mask_centre(seg)
    lo, hi = _window(img)
    # (slice of image, slice of mask, pixel height/width, label, corner letters left/right)
    views = [
        (img[cz], seg[cz], sy / sx, f"axial z={cz}", ("R", "L")),
        (img[:, cy, :][::-1], seg[:, cy, :][::-1], sz / sx, f"coronal y={cy}", ("R", "L")),
        (img[:, :, cx][::-1], seg[:, :, cx][::-1], sz / sy, f"sagittal x={cx}", ("A", "P")),
    ]
    views = [(np.asarray(i, dtype=np.float32), np.asarray(m) > 0, *rest) for i, m, *rest in views]
    fig = Figure(figsize=(13, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (im, m, aspect, label, (left, right)) in zip(axes, views):
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.imshow(np.ma.masked_where(~m, m), cmap=ListedColormap(["red"]), vmin=0, vmax=1, alpha=0.35, aspect=aspect,
                  interpolation="nearest")
        if m.any():
            ax.contour(m.astype(np.uint8), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(label, fontsize=9)
        ax.text(0.01, 0.5, left, color="yellow", transform=ax.transAxes, va="center", fontsize=9)
        ax.text(0.99, 0.5, right, color="yellow", transform=ax.transAxes, va="center", ha="right", fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
