"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: an absolute path, a ``..`` component, a link
whose target leaves the extraction folder, a hard link to a file outside the archive, a device or
a FIFO stops the extraction with an error naming the archive and the member. macOS litter
(``__MACOSX/``, ``._*``, ``.DS_Store``) is skipped and counted: the Decathlon's tar files carry
``._pancreas_XXX.nii.gz`` files that are not images. Extraction goes into a temporary folder next
to the destination, which is renamed to the destination only when every member was written.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_dir
from ..errors import InputError
from .download import human_bytes

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class Member:
    name: str  # normalised relative path (forward slashes)
    kind: str  # file, dir, symlink, hardlink
    size: int = 0
    link: str = ""  # link target (symlink: as stored; hardlink: archive path)
    ref: object = None  # the ZipInfo / TarInfo


def _normalise(archive, raw_name: str) -> str | None:
    name = raw_name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InputError(archive, f"member {raw_name!r} has an absolute path; refusing to extract")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(archive, f"member {raw_name!r} climbs out of the target with '..'; refusing to extract")
    return "/".join(parts) or None


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store"


def _check_symlink(archive, name: str, target: str) -> None:
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target.replace("\\", "/")))
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target) or resolved == ".." or resolved.startswith("../"):
        raise InputError(archive, f"member {name!r} is a link to {target!r}, outside the extraction folder; "
                                  "refusing to extract")


def _zip_members(archive, zf: zipfile.ZipFile) -> list[Member]:
    members = []
    for info in zf.infolist():
        name = _normalise(archive, info.filename)
        if name is None:
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            _check_symlink(archive, name, target)
            members.append(Member(name, "symlink", link=target, ref=info))
        elif info.is_dir():
            members.append(Member(name, "dir", ref=info))
        else:
            members.append(Member(name, "file", info.file_size, ref=info))
    return members


def _tar_members(archive, tf: tarfile.TarFile) -> list[Member]:
    members = []
    for info in tf.getmembers():
        name = _normalise(archive, info.name)
        if name is None:
            continue
        if info.issym():
            _check_symlink(archive, name, info.linkname)
            members.append(Member(name, "symlink", link=info.linkname, ref=info))
        elif info.islnk():
            target = _normalise(archive, info.linkname)
            if target is None:
                raise InputError(archive, f"member {info.name!r} is a hard link to nothing; refusing to extract")
            members.append(Member(name, "hardlink", link=target, ref=info))
        elif info.isdir():
            members.append(Member(name, "dir", ref=info))
        elif info.isfile():
            members.append(Member(name, "file", info.size, ref=info))
        else:
            raise InputError(archive, f"member {info.name!r} is a device or FIFO; refusing to extract")
    return members


def list_members(archive) -> list[Member]:
    """All members, checked (raises InputError on the first unsafe one)."""
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return _zip_members(archive, zf)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            return _tar_members(archive, tf)
    raise InputError(archive, "is neither a zip nor a tar archive")


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def safe_extract(archive, dest) -> dict:
    """Extract `archive` into the new folder `dest`; returns counts. Nothing is left on failure."""
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise InputError(dest, "extraction target exists already")
    members = list_members(archive)  # every member checked before anything is written
    keep = [m for m in members if not _is_junk(m.name)]
    skipped = len(members) - len(keep)
    names = {m.name for m in keep}
    for m in keep:
        if m.kind == "hardlink" and m.link not in names:
            raise InputError(archive, f"member {m.name!r} is a hard link to {m.link!r}, which is not in the archive; "
                                      "refusing to extract")
    total = sum(m.size for m in keep)
    log.info("%s: extracting %d members (%s)%s", archive.name, len(keep), human_bytes(total),
             f", skipping {skipped} macOS metadata entries" if skipped else "")
    done, t_last = 0, time.monotonic()
    try:
        opener = zipfile.ZipFile(archive) if zipfile.is_zipfile(archive) else tarfile.open(archive, "r:*")
        with atomic_dir(dest) as tmp, opener as arc:
            for i, m in enumerate(keep, 1):
                target = tmp / m.name
                folder = target if m.kind == "dir" else target.parent
                existing = folder
                while not existing.exists():
                    existing = existing.parent
                if not _inside(tmp, existing):  # links inside the archive may chain out of it
                    raise InputError(archive, f"member {m.name!r} would be written through a link that leads "
                                              "outside the extraction folder; refusing to extract")
                folder.mkdir(parents=True, exist_ok=True)
                if m.kind == "dir":
                    continue
                if target.is_symlink() or target.exists():
                    target.unlink()  # a later member of the same name wins, as with unzip/tar
                if m.kind == "symlink":
                    os.symlink(m.link, target)
                elif m.kind == "hardlink":
                    shutil.copyfile(tmp / m.link, target)
                elif isinstance(arc, zipfile.ZipFile):
                    with arc.open(m.ref) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                else:
                    src = arc.extractfile(m.ref)
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                done += m.size
                if time.monotonic() - t_last >= 10:
                    t_last = time.monotonic()
                    log.info("%s: extracted %d/%d members (%s of %s)", archive.name, i, len(keep),
                             human_bytes(done), human_bytes(total))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(archive, f"cannot be extracted ({type(exc).__name__}: {exc})") from None
    log.info("%s: extracted %d members (%s) into %s", archive.name, len(keep), human_bytes(done), dest)
    return {"members": len(keep), "bytes": done, "skipped": skipped}
