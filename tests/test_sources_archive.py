"""Safe extraction: absolute paths, '..', escaping links and devices are refused; nothing is left."""

import io
import stat
import tarfile
import zipfile

import pytest

from workflow_scripts.common.errors import InputError
from workflow_scripts.common.safe_archive import safe_extract


def make_zip(path, entries, links=None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar(path, entries, links=None, hardlinks=None, fifo=None):
    with tarfile.open(path, "w") as tf:  # links first: the attack writes through them afterwards
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (hardlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, target
            tf.addfile(info)
        if fifo:
            info = tarfile.TarInfo(fifo)
            info.type = tarfile.FIFOTYPE
            tf.addfile(info)
    return path


def assert_refused(archive, dest, match):
    with pytest.raises(InputError, match=match) as err:
        safe_extract(archive, dest)
    assert str(archive) in str(err.value)  # the message names the archive
    assert not dest.exists() and not list(dest.parent.glob(".part-*"))
    assert not list(dest.parent.parent.rglob("owned*"))


GOOD = {"t1/imagesTr/AHN_0001_0000.nii.gz": b"img", "t1/labelsTr/AHN_0001.nii.gz": b"lab"}


def test_good_zip_and_macos_litter(tmp_path):
    archive = make_zip(tmp_path / "t1.zip", {**GOOD, "__MACOSX/t1/imagesTr/._AHN_0001_0000.nii.gz": b"junk",
                                             "t1/imagesTr/._AHN_0001_0000.nii.gz": b"junk", "t1/.DS_Store": b"x"},
                       links={"t1/latest": "imagesTr/AHN_0001_0000.nii.gz"})
    counts = safe_extract(archive, tmp_path / "out" / "t1")
    out = tmp_path / "out" / "t1"
    assert (out / "t1/imagesTr/AHN_0001_0000.nii.gz").read_bytes() == b"img"
    assert (out / "t1/latest").is_symlink() and (out / "t1/latest").read_bytes() == b"img"
    assert not (out / "__MACOSX").exists() and not list(out.rglob("._*")) and counts["skipped"] == 3


@pytest.mark.parametrize("name", ["../owned.txt", "t1/../../owned.txt", "..\\owned.txt"])
def test_zip_parent_entries_refused(tmp_path, name):
    archive = make_zip(tmp_path / "a.zip", {**GOOD, name: b"owned"})
    assert_refused(archive, tmp_path / "x" / "out", "climbs out")


@pytest.mark.parametrize("name", ["/tmp/owned.txt", "C:/owned.txt"])
def test_zip_absolute_paths_refused(tmp_path, name):
    archive = make_zip(tmp_path / "a.zip", {**GOOD, name: b"owned"})
    assert_refused(archive, tmp_path / "x" / "out", "absolute path")


@pytest.mark.parametrize("target", ["../../owned", "/etc/passwd", "t1/../../../owned"])
def test_zip_escaping_symlink_refused(tmp_path, target):
    archive = make_zip(tmp_path / "a.zip", GOOD, links={"t1/link": target})
    assert_refused(archive, tmp_path / "x" / "out", "outside the extraction folder")


def test_tar_escaping_symlink_and_write_through_it_refused(tmp_path):
    archive = make_tar(tmp_path / "a.tar", {**GOOD, "evil/owned.txt": b"owned"}, links={"evil": "../.."})
    assert_refused(archive, tmp_path / "x" / "out", "outside the extraction folder")


def test_tar_link_chain_out_of_the_folder_refused(tmp_path):
    # each link looks harmless on its own: here -> ".", up -> "here/.." (textually "."), but up/ is the parent
    archive = make_tar(tmp_path / "a.tar", {"up/owned.txt": b"owned"}, links={"here": ".", "up": "here/.."})
    assert_refused(archive, tmp_path / "x" / "out", "member 'up' resolves outside the extraction folder")


def test_tar_hardlink_outside_refused(tmp_path):
    archive = make_tar(tmp_path / "a.tar", GOOD, hardlinks={"t1/h": "../../etc/passwd"})
    assert_refused(archive, tmp_path / "x" / "out", "member 't1/h' is a hard link to '../../etc/passwd', outside")
    archive = make_tar(tmp_path / "c.tar", GOOD, hardlinks={"t1/h": "/etc/passwd"})
    assert_refused(archive, tmp_path / "z" / "out", "member 't1/h' is a hard link to '/etc/passwd', outside")
    archive = make_tar(tmp_path / "b.tar", GOOD, hardlinks={"t1/h": "etc/passwd"})
    assert_refused(archive, tmp_path / "y" / "out", "'t1/h' is a hard link to 'etc/passwd', which is not a file in")


def test_tar_absolute_and_fifo_refused(tmp_path):
    assert_refused(make_tar(tmp_path / "a.tar", {"/owned.txt": b"x"}), tmp_path / "x" / "out", "absolute path")
    assert_refused(make_tar(tmp_path / "b.tar", GOOD, fifo="t1/pipe"), tmp_path / "y" / "out", "device or FIFO")


def test_tar_hardlink_inside_is_copied(tmp_path):
    archive = make_tar(tmp_path / "a.tar", GOOD, hardlinks={"t1/copy.nii.gz": "t1/labelsTr/AHN_0001.nii.gz"})
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "t1/copy.nii.gz").read_bytes() == b"lab"


def test_not_an_archive(tmp_path):
    (tmp_path / "a.zip").write_bytes(b"this is not a zip")
    with pytest.raises(InputError, match="neither a zip nor a tar"):
        safe_extract(tmp_path / "a.zip", tmp_path / "out")


def test_issue16_symlink_chain_refused(tmp_path):
    """a/lnk -> .. (inside), a/lnk2 -> sub/lnk/../.. : textually inside, resolved it is the folder's parent."""
    links = {"a/sub": ".", "a/lnk": "..", "a/lnk2": "sub/lnk/../.."}
    archive = make_tar(tmp_path / "a.tar", GOOD, links=links)
    assert_refused(archive, tmp_path / "x" / "out", "'a/lnk2' resolves outside the extraction folder")
    archive = make_zip(tmp_path / "a.zip", GOOD, links=links)
    assert_refused(archive, tmp_path / "y" / "out", "'a/lnk2' resolves outside the extraction folder")


@pytest.mark.parametrize("order", ["links_first", "links_last"])
def test_long_link_chain_refused_in_any_order(tmp_path, order):
    """A chain of five links, each one step up from the last: the last one resolves two levels up."""
    links = {"l0": "d1/d2/d3/d4/d5", "d1/d2/d3/d4/d5/l1": "..", "l2": "l0/l1/..", "l3": "l2/..", "l4": "l3/..",
             "l5": "l4/../..", "l6": "l5/../../.."}
    entries = {**GOOD, "d1/d2/d3/d4/d5/x.txt": b"x"}
    if order == "links_first":
        archive = make_tar(tmp_path / "a.tar", entries, links=links)
    else:
        archive = make_zip(tmp_path / "a.zip", entries, links=links)
    assert_refused(archive, tmp_path / "x" / "out", "resolves outside the extraction folder")


def test_link_loop_refused(tmp_path):
    archive = make_tar(tmp_path / "a.tar", GOOD, links={"a": "b", "b": "a", "t1/c": "../a/x"})
    assert_refused(archive, tmp_path / "x" / "out", "loop")


def test_links_that_stay_inside_are_kept(tmp_path):
    links = {"t1/latest": "imagesTr", "t1/alias": "latest/../labelsTr/AHN_0001.nii.gz", "t1/up": "."}
    archive = make_tar(tmp_path / "a.tar", GOOD, links=links)
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "t1" / "alias").read_bytes() == b"lab"
