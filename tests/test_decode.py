"""Full decoding of NIfTI files and DICOM series: damage is an error naming the file, never zero-filled."""

import gzip
import shutil

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import blob, write_nifti
from dicom_series import write_series
from workflow_scripts.data import decode
from workflow_scripts.deployment import dicom
from workflow_scripts.deployment import segment
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.image_checks import check_pair

SHAPE = (6, 10, 12)  # z, y, x


def image_array(seed=0):
    return np.random.default_rng(seed).normal(100, 20, SHAPE).astype(np.float32)


@pytest.fixture
def pair(tmp_path):
    img = write_nifti(tmp_path / "img.nii.gz", image_array(), spacing=(0.8, 0.9, 2.5), origin=(3, 4, 5))
    lab = write_nifti(tmp_path / "lab.nii.gz", blob(SHAPE, centre=(3, 5, 6), radius=2), spacing=(0.8, 0.9, 2.5),
                      origin=(3, 4, 5))
    return img, lab


def test_decoded_volume_equals_nibabel_and_simpleitk(pair):
    img, _ = pair
    v = decode.read_nifti(img)
    assert np.array_equal(v.array, np.asanyarray(nibabel.load(str(img)).dataobj))
    ref = sitk.ReadImage(str(img))
    assert np.array_equal(v.zyx, sitk.GetArrayFromImage(ref)) and v.size == ref.GetSize()
    assert (v.spacing, v.origin, v.direction) == (ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection())
    back = v.to_sitk()
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ref))
    assert back.GetOrigin() == ref.GetOrigin() and back.GetSpacing() == ref.GetSpacing()


def test_uncompressed_and_scaled_files(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    nii = nibabel.Nifti1Image(arr, np.eye(4))
    nii.header.set_slope_inter(2.0, -5.0)
    nibabel.save(nii, tmp_path / "s.nii")
    v = decode.read_nifti(tmp_path / "s.nii")
    assert np.array_equal(v.array, arr * 2.0 - 5.0)  # as nibabel (and nnU-Net) read it


@pytest.mark.parametrize("cut", [1, 4, 8, 100, 0.5, 0.9])
def test_truncated_gzip_is_an_error(pair, cut):
    """Issue 16, item 1: SimpleITK fills the missing end with zeros; here it is an error."""
    _, lab = pair
    data = lab.read_bytes()
    keep = int(len(data) * cut) if isinstance(cut, float) else len(data) - cut
    lab.write_bytes(data[:keep])
    with pytest.raises(InputError, match="cannot be read as NIfTI: (truncated|corrupt)") as err:
        decode.read_nifti(lab)
    assert str(lab) in str(err.value)


def test_simpleitk_alone_would_accept_a_truncated_label(pair):
    """The reason for decode.py: proof that the reader zero-fills (if this ever fails, SimpleITK got stricter)."""
    _, lab = pair
    data = lab.read_bytes()
    lab.write_bytes(data[:-12])
    sitk.ReadImage(str(lab))


def test_bit_flip_and_trailing_bytes(pair):
    img, _ = pair
    data = bytearray(img.read_bytes())
    good = bytes(data)
    data[len(data) // 2] ^= 0x10
    img.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt gzip data"):
        decode.read_nifti(img)
    img.write_bytes(good + b"\0" * 16)  # zero padding after the stream: gzip accepts it, so do we
    decode.read_nifti(img)
    img.write_bytes(good + b"junk")
    with pytest.raises(InputError, match="4 bytes of something else after the gzip data"):
        decode.read_nifti(img)
    img.write_bytes(good + gzip.compress(b"second member"))  # a second member makes the data too long
    with pytest.raises(InputError, match="more than its header describes"):
        decode.read_nifti(img)


def test_uncompressed_size_must_match_header(tmp_path):
    path = write_nifti(tmp_path / "a.nii", image_array())
    data = path.read_bytes()
    path.write_bytes(data[:-4])
    with pytest.raises(InputError, match=r"truncated, its header describes \d+ bytes"):
        decode.read_nifti(path)
    path.write_bytes(data + b"\0\0\0\0")
    with pytest.raises(InputError, match="4 bytes more than its header describes"):
        decode.read_nifti(path)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"), (b"this is not an image", "not gzip-compressed"), (gzip.compress(b"x" * 400), "no NIfTI header"),
    (gzip.compress(b"short"), "truncated")])
def test_not_nifti(tmp_path, content, problem):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem):
        decode.read_nifti(path)


def test_misnamed_compression(tmp_path, pair):
    img, _ = pair
    shutil.copy(img, tmp_path / "gz_named.nii")
    with pytest.raises(InputError, match="gzip-compressed data named .nii"):
        decode.read_nifti(tmp_path / "gz_named.nii")
    plain = write_nifti(tmp_path / "plain.nii", image_array())
    shutil.copy(plain, tmp_path / "plain_named.nii.gz")
    with pytest.raises(InputError, match="not gzip-compressed"):
        decode.read_nifti(tmp_path / "plain_named.nii.gz")


def test_four_d_and_missing(tmp_path):
    nibabel.save(nibabel.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    with pytest.raises(InputError, match="4-D image"):
        decode.read_nifti(tmp_path / "4d.nii.gz")
    with pytest.raises(InputError, match="does not exist"):
        decode.read_nifti(tmp_path / "none.nii.gz")


def test_pair_with_truncated_label_or_image_is_an_input_error(pair):
    """Issue 16, items 1 and 2: a truncated label or image never passes and never raises a bare EOFError."""
    img, lab = pair
    check_pair(img, lab)
    good = lab.read_bytes()
    lab.write_bytes(good[:-30])
    with pytest.raises(InputError, match=str(lab)):
        check_pair(img, lab)
    lab.write_bytes(good)
    img.write_bytes(img.read_bytes()[:200])
    with pytest.raises(InputError, match=str(img)):
        check_pair(img, lab)


def test_label_values_reported(tmp_path, pair):
    img, lab = pair
    arr = blob(SHAPE, centre=(3, 5, 6), radius=2) * 3
    arr[0, 0, 0] = 7
    write_nifti(lab, arr, spacing=(0.8, 0.9, 2.5), origin=(3, 4, 5))
    with pytest.raises(InputError, match=r"label values must be 0/1, found \[0, 3, 7\]"):
        check_pair(img, lab)


def test_segment_refuses_a_truncated_nifti(pair):
    img, _ = pair
    segment.check_nifti(img)
    img.write_bytes(img.read_bytes()[:-9])
    with pytest.raises(InputError, match="truncated"):
        segment.check_nifti(img)


@pytest.fixture
def series_dir(tmp_path):
    image = sitk.GetImageFromArray((image_array() * 10).astype(np.int16))
    image.SetSpacing((0.8, 0.9, 2.5))
    write_series(image, tmp_path / "dcm", "1.2.826.0.1.3680043.8.498.77")
    return tmp_path / "dcm", image


def test_dicom_series_reads_back(series_dir):
    folder, image = series_dir
    (series,), stray = dicom.find_series(folder)
    assert stray == []
    assert np.array_equal(sitk.GetArrayFromImage(dicom.read_series(series)), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("which", [0, 2, -1])
def test_dicom_series_with_a_truncated_slice_is_refused(series_dir, which):
    """GDCM leaves a truncated file out of its series: an end slice would silently be missing."""
    folder, _ = series_dir
    victim = sorted(folder.glob("*.dcm"))[which]
    victim.write_bytes(victim.read_bytes()[:-40])
    scans, _ = segment.find_scans(folder)
    series_scans = [s for s in scans if s.series is not None]
    assert series_scans and all(s.unreadable for s in series_scans)
    with pytest.raises(InputError, match=rf"{victim.name}|missing slices"):
        dicom.read_series(series_scans[0].series, series_scans[0].unreadable)
