"""Check one image/label pair before anything trains on it.

A pair is good when both files read, the image is finite, the label holds only 0 and 1 with
some foreground, and both sit on the same voxel grid (size, spacing, origin, direction within
tolerance). A label whose header (origin/direction) disagrees with its image while size and
spacing agree is a known PanSegData quirk (FACTS §3): with ``header_mismatch="use_image"`` it is
accepted and re-written with the image's geometry, and the fix is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError


@dataclass
class PairCheck:
    image: str
    label: str
    fixed_label: sitk.Image | None = None  # set when the label needs the image's geometry
    notes: list[str] = field(default_factory=list)
    voxels: int = 0
    label_voxels: int = 0
    spacing: tuple[float, float, float] = (0.0, 0.0, 0.0)


def read_image(path) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    try:
        return sitk.ReadImage(str(path))
    except Exception as exc:  # SimpleITK raises RuntimeError with a long ITK trace
        first = str(exc).strip().splitlines()
        raise InputError(path, f"cannot be read as an image ({first[-1] if first else exc})") from None


def nonfinite_voxels(path, image: sitk.Image) -> int:
    """Count NaN/inf voxels. NIfTI files are read with nibabel here: SimpleITK's reader turns NaN
    into 0, while nnU-Net (nibabel) would see the NaN and train on it."""
    if str(path).endswith((".nii", ".nii.gz")):
        import nibabel

        arr = np.asanyarray(nibabel.load(str(path)).dataobj)
    else:
        arr = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(arr.dtype, np.floating):
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def _close(a, b, tol) -> bool:
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0, atol=tol))


def check_pair(image_path, label_path, spacing_tol=1e-3, origin_tol_mm=1e-2, direction_tol=1e-3,
               header_mismatch="error") -> PairCheck:
    """Validate one pair; raise InputError naming the file and the problem."""
    image = read_image(image_path)
    label = read_image(label_path)
    result = PairCheck(str(image_path), str(label_path))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(image_path, f"expected a 3-D single-channel image, got {image.GetDimension()}-D "
                                     f"with {image.GetNumberOfComponentsPerPixel()} components")
    bad = nonfinite_voxels(image_path, image)
    if bad:
        raise InputError(image_path, f"{bad} voxels are NaN or infinite")
    if label.GetSize() != image.GetSize():
        raise InputError(label_path, f"label size {label.GetSize()} differs from image size {image.GetSize()} "
                                     f"({image_path})")
    if not _close(label.GetSpacing(), image.GetSpacing(), spacing_tol * max(image.GetSpacing())):
        raise InputError(label_path, f"label spacing {label.GetSpacing()} differs from image spacing "
                                     f"{image.GetSpacing()} ({image_path})")
    lab = sitk.GetArrayViewFromImage(label)
    values = np.unique(lab)
    if not set(values.tolist()) <= {0, 1}:
        raise InputError(label_path, f"label values must be 0/1, found {values[:10].tolist()}")
    result.label_voxels = int(np.count_nonzero(lab))
    if result.label_voxels == 0:
        raise InputError(label_path, "label has no foreground (pancreas) voxels")
    result.voxels = int(lab.size)
    result.spacing = tuple(float(s) for s in image.GetSpacing())

    same_origin = _close(label.GetOrigin(), image.GetOrigin(), origin_tol_mm)
    same_direction = _close(label.GetDirection(), image.GetDirection(), direction_tol)
    if not (same_origin and same_direction):
        what = " and ".join(w for w, ok in (("origin", same_origin), ("direction", same_direction)) if not ok)
        if header_mismatch != "use_image":
            raise InputError(label_path, f"label {what} differs from the image's ({image_path}); set "
                                         "prepare.label_header_mismatch: use_image to accept same-size labels "
                                         "with the image's geometry")
        fixed = sitk.Cast(label, sitk.sitkUInt8)
        fixed.CopyInformation(image)
        result.fixed_label = fixed
        result.notes.append(f"label {what} replaced by the image's")
    return result
