"""Check one image/label pair before anything trains on it.

Both files are decoded completely and verified first (``decode.read_nifti``: a truncated or corrupt
file is an error, never zero-filled). A pair is then good when the image is finite, the label
holds only 0 and 1 with some foreground, and both sit on the same voxel grid (size, spacing,
origin, direction within tolerance). A label whose header (origin/direction) disagrees with its
image while size and spacing agree is a known PanSegData quirk (docs/facts.md §3): with
``header_mismatch="use_image"`` it is accepted and re-written (from its verified voxels) with the
image's geometry, and the fix is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.data.decode import Volume, binary_label_voxels, count_nonfinite, read_nifti
from workflow_scripts.common.errors import InputError


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
    """A SimpleITK image of a file the workflow wrote or prepare verified (evaluation, figures)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    try:
        return sitk.ReadImage(str(path))
    except Exception as exc:  # SimpleITK raises RuntimeError with a long ITK trace
        first = str(exc).strip().splitlines()
        raise InputError(path, f"cannot be read as an image ({first[-1] if first else exc})") from None


def _close(a, b, tol) -> bool:
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0, atol=tol))


def check_image(image_path) -> Volume:
    """Decode an image and refuse NaN/infinite voxels (nnU-Net, reading with nibabel, would train on them)."""
    image = read_nifti(image_path)
    bad = count_nonfinite(image.array)
    if bad:
        raise InputError(image_path, f"{bad} voxels are NaN or infinite")
    return image


def check_label(image: Volume, label_path, spacing_tol=1e-3, origin_tol_mm=1e-2, direction_tol=1e-3,
                header_mismatch="error") -> PairCheck:
    """Validate a label (or an extra annotation) against its decoded image; raise InputError naming the file."""
    image_path = image.path
    label = read_nifti(label_path)
    result = PairCheck(str(image_path), str(label_path))
    if label.size != image.size:
        raise InputError(label_path, f"label size {label.size} differs from image size {image.size} ({image_path})")
    if not _close(label.spacing, image.spacing, spacing_tol * max(image.spacing)):
        raise InputError(label_path, f"label spacing {label.spacing} differs from image spacing "
                                     f"{image.spacing} ({image_path})")
    result.label_voxels = binary_label_voxels(label)
    if result.label_voxels == 0:
        raise InputError(label_path, "label has no foreground (pancreas) voxels")
    result.voxels = int(label.array.size)
    result.spacing = tuple(float(s) for s in image.spacing)

    same_origin = _close(label.origin, image.origin, origin_tol_mm)
    same_direction = _close(label.direction, image.direction, direction_tol)
    if not (same_origin and same_direction):
        what = " and ".join(w for w, ok in (("origin", same_origin), ("direction", same_direction)) if not ok)
        if header_mismatch != "use_image":
            raise InputError(label_path, f"label {what} differs from the image's ({image_path}); set "
                                         "prepare.label_header_mismatch: use_image to accept same-size labels "
                                         "with the image's geometry")
        result.fixed_label = image.to_sitk(label.zyx.astype(np.uint8))  # the verified voxels, the image's grid
        result.notes.append(f"label {what} replaced by the image's")
    return result


def check_pair(image_path, label_path, spacing_tol=1e-3, origin_tol_mm=1e-2, direction_tol=1e-3,
               header_mismatch="error") -> PairCheck:
    """Validate one pair; raise InputError naming the file and the problem."""
    image = check_image(image_path)
    return check_label(image, label_path, spacing_tol, origin_tol_mm, direction_tol, header_mismatch)
