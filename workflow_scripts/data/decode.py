"""Fully decode and verify one input image (a NIfTI file or a DICOM series) before anything uses it.

Readers forgive too much: SimpleITK fills the missing end of a truncated ``.nii.gz`` with zeros
(a label then loses part of its mask without a word), and nibabel reads lazily, so a damaged
file fails late, in the middle of a job, with a bare ``EOFError``. Here every file is read to
its last byte first:

- ``.nii.gz``: the whole gzip stream is inflated, each member's CRC-32 and length checked by
  zlib, and nothing but zero padding may follow the last member. A ``.nii`` must not be gzip
  data and vice versa.
- The NIfTI header (NIfTI-1 or -2, single file) is parsed by nibabel, and the data must fill
  exactly the bytes it describes: ``vox_offset + voxels x bytes per voxel`` (a shorter file is
  truncated, a longer one has something appended).
- The voxels are then taken from those verified bytes (scaled by ``scl_slope``/``scl_inter`` as
  nibabel, and so nnU-Net, reads them); the geometry (spacing, origin, direction) is SimpleITK's
  reading of the same header, which the rest of the workflow uses.
- A DICOM series is read by GDCM (which refuses truncated files) only when its slices are evenly
  spaced and no file beside it failed to read (a damaged slice would otherwise just be missing).

Every failure is an ``InputError`` naming the file and the problem, never a traceback. Converted
or rewritten images (merged or re-headed labels) are built from a ``Volume``, so only verified
data is ever written.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from workflow_scripts.common.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Volume:
    """A fully decoded 3-D image: voxels in NIfTI index order (x, y, z), geometry as SimpleITK reads it."""

    path: Path
    array: np.ndarray  # read-only; nibabel's (and nnU-Net's) values, shape (x, y, z)
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def zyx(self) -> np.ndarray:
        """The voxels in SimpleITK's array order (z, y, x): a view, no copy."""
        return self.array.T

    @property
    def size(self) -> tuple[int, ...]:
        """Voxels along x, y, z (SimpleITK's GetSize)."""
        return tuple(int(n) for n in self.array.shape)

    def to_sitk(self, zyx: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image of these voxels (or of `zyx`, same grid) with this volume's geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.zyx if zyx is None else zyx))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def _problem(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else 'no message'}"


def gunzip_verified(path, data: bytes) -> bytes:
    """Inflate every gzip member of `data`, checking each CRC-32 and length; raise InputError naming `path`."""
    out, rest, members = [], data, 0
    while rest:
        if rest[:2] != GZIP_MAGIC:
            if members and not rest.strip(b"\x00"):
                break  # zero padding after the last member (gzip itself accepts it)
            where = "not gzip-compressed data" if not members else \
                f"{len(rest)} bytes of something else after the gzip data"
            raise InputError(path, f"cannot be read as NIfTI: {where} (the file is damaged or not a .nii.gz)")
        inflater = zlib.decompressobj(wbits=31)  # gzip wrapper: zlib checks the CRC-32 and length itself
        try:
            out.append(inflater.decompress(rest))
        except zlib.error as exc:
            raise InputError(path, f"cannot be read as NIfTI: corrupt gzip data ({exc}); the file is damaged") from None
        if not inflater.eof:
            raise InputError(path, f"cannot be read as NIfTI: truncated, the gzip stream ends early after "
                                   f"{len(data)} bytes (an interrupted copy or download?)")
        rest, members = inflater.unused_data, members + 1
    return b"".join(out)


def _nifti_header(path, data: bytes):
    import nibabel

    if len(data) < 348:
        raise InputError(path, f"cannot be read as NIfTI: truncated, {len(data)} bytes are less than a NIfTI header")
    sizes = {int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")}
    klass = nibabel.Nifti1Header if 348 in sizes else nibabel.Nifti2Header if 540 in sizes else None
    if klass is None:
        raise InputError(path, "cannot be read as NIfTI: no NIfTI header at its start")
    try:
        header = klass.from_fileobj(io.BytesIO(data), check=True)
    except Exception as exc:  # nibabel raises several kinds for a damaged header
        raise InputError(path, f"cannot be read as NIfTI: damaged header ({_problem(exc)})") from None
    magic = bytes(header["magic"]).rstrip(b"\x00")
    if magic not in (b"n+1", b"n+2"):
        raise InputError(path, f"cannot be read as NIfTI: magic {magic!r} is not that of a single-file NIfTI "
                               "(.hdr/.img pairs are not supported)")
    return header


def read_nifti(path) -> Volume:
    """Read a .nii or .nii.gz completely and verify it (see the module docstring); raise InputError."""
    from nibabel.volumeutils import apply_read_scaling

    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise InputError(path, "is not named .nii or .nii.gz")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file does not exist") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({_problem(exc)})") from None
    if not data:
        raise InputError(path, "cannot be read as NIfTI: the file is empty (0 bytes)")
    if name.endswith(".gz"):
        data = gunzip_verified(path, data)
    elif data[:2] == GZIP_MAGIC:
        raise InputError(path, "cannot be read as NIfTI: gzip-compressed data named .nii (rename it .nii.gz)")
    header = _nifti_header(path, data)
    shape = tuple(int(n) for n in header.get_data_shape())
    if len(shape) != 3:
        raise InputError(path, f"is a {len(shape)}-D image of shape {shape}; expected one 3-D single-channel scan")
    if min(shape) < 1:
        raise InputError(path, f"has shape {shape}: no voxels")
    try:
        dtype = header.get_data_dtype()
    except Exception as exc:
        raise InputError(path, f"cannot be read as NIfTI: unknown data type ({_problem(exc)})") from None
    if dtype.fields is not None or dtype.kind == "c":
        raise InputError(path, f"voxels of type {dtype} (colour or complex); expected one grey value per voxel")
    offset = int(header.get_data_offset())
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if len(data) < needed:
        raise InputError(path, f"cannot be read as NIfTI: truncated, its header describes {needed} bytes (shape "
                               f"{shape}, {dtype}), the file holds {len(data)}")
    if len(data) > needed:
        raise InputError(path, f"cannot be read as NIfTI: {len(data) - needed} bytes more than its header describes "
                               f"(shape {shape}, {dtype}); the file is damaged or something was appended")
    raw = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape, order="F")
    slope, inter = header.get_slope_inter()
    array = apply_read_scaling(raw, slope, inter)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"cannot be read as NIfTI by SimpleITK ({_problem(exc)})") from None
    if reader.GetDimension() != 3 or tuple(reader.GetSize()) != shape or reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"SimpleITK reads it as size {reader.GetSize()} with {reader.GetNumberOfComponents()} "
                               f"components, nibabel as {shape}: an unusual header the workflow cannot use")
    return Volume(path, array, tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()))


def count_nonfinite(array: np.ndarray) -> int:
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def binary_label_voxels(volume: Volume) -> int:
    """Foreground voxels of a label that must hold only 0 and 1 (raise InputError otherwise)."""
    a = volume.array
    ones = int(np.count_nonzero(a == 1))
    zeros = int(np.count_nonzero(a == 0))
    if ones + zeros != a.size:  # cheaper than np.unique on a CT-sized label
        other = a[(a != 0) & (a != 1)]
        found = [0] * bool(zeros) + [1] * bool(ones) + np.unique(other).tolist()[:8]
        raise InputError(volume.path, f"label values must be 0/1, found {found} ({other.size} voxels neither 0 nor 1)")
    return ones


# ---- DICOM -----------------------------------------------------------------------------------
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


def looks_like_dicom(path: Path) -> bool:
    """A DICOM suffix, or the 'DICM' preamble marker at byte 128 (files without a suffix)."""
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def unreadable_dicom_files(folder, series_files) -> list[Path]:
    """DICOM-looking files directly in `folder` that belong to none of `series_files` (a DICOMDIR
    index is no image); GDCM leaves a damaged file out of every series."""
    names = {Path(f).name for f in series_files}
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in names
                  and p.name.upper() != "DICOMDIR" and looks_like_dicom(p))


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def check_slice_positions(folder, uid: str, files) -> None:
    """Refuse duplicate or missing slices (uneven spacing along the slice normal)."""
    positions, normal = [], None
    for f in files:
        try:
            head = _header(f)
        except RuntimeError as exc:
            raise InputError(f, f"DICOM header cannot be read ({_problem(exc)})") from None
        ipp, iop = _tag(head, "0020|0032"), _tag(head, "0020|0037")
        if not ipp or not iop:
            raise InputError(folder, f"series {uid}: {Path(f).name} has no ImagePositionPatient/"
                                     "ImageOrientationPatient, so its slices cannot be placed")
        try:
            if normal is None:
                o = np.array([float(v) for v in iop.split("\\")])
                normal = np.cross(o[:3], o[3:])
            positions.append(float(np.dot([float(v) for v in ipp.split("\\")], normal)))
        except ValueError:
            raise InputError(f, f"unreadable ImagePositionPatient {ipp!r} / ImageOrientationPatient {iop!r}") from None
    steps = np.abs(np.diff(positions))
    if np.any(steps < 1e-3):
        raise InputError(folder, f"series {uid}: two slices at the same position (duplicate slices?)")
    if steps.max() - steps.min() > 0.01 * np.median(steps) + 1e-3:
        raise InputError(folder, f"series {uid}: slice spacing varies from {steps.min():.3g} to "
                                 f"{steps.max():.3g} mm (missing slices?); a volume needs even spacing")


def read_dicom_series(folder, uid: str, files, unreadable=()) -> sitk.Image:
    """One DICOM series (its files ordered by slice position) as a verified 3-D image.

    `unreadable`: DICOM-looking files in the same folder that no series could read. One of them
    may be a damaged slice of this series, which would otherwise simply be left out (a volume
    silently shorter at one end), so they make the series an error too.
    """
    folder = Path(folder)
    if unreadable:
        raise InputError(folder, f"series {uid}: {len(unreadable)} DICOM file(s) beside it cannot be read (first: "
                                 f"{Path(unreadable[0]).name}); a damaged slice of this series would be missing")
    try:
        if len(files) == 1:  # an enhanced (multi-frame) file holds the whole volume
            image = sitk.ReadImage(str(files[0]))
        else:
            check_slice_positions(folder, uid, files)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(f) for f in files])
            image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(folder, f"series {uid} cannot be read ({_problem(exc)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(folder, f"series {uid} is not a grayscale scan "
                                 f"({image.GetNumberOfComponentsPerPixel()} components per pixel)")
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise InputError(folder, f"series {uid} has {len(files)} slice(s) of size "
                                 f"{image.GetSize()}; a 3-D scan needs at least 2 slices")
    if len(files) > 1 and image.GetSize()[2] != len(files):
        raise InputError(folder, f"series {uid}: {len(files)} files gave {image.GetSize()[2]} slices")
    return image
