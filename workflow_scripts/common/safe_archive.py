"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: an absolute path, a ``..`` component, a device
or a FIFO stops the extraction with an error naming the archive and the member. Links are not
judged by their text: every member's path and every symbolic link's target is resolved through
all the symbolic links the archive declares (a chain such as ``a/lnk -> ..`` plus
``a/lnk2 -> sub/lnk/../..``, whatever the members' order), and a member that ends up outside the
extraction folder is refused; so is a hard link to anything but a regular file of the archive.
While writing, each member's folder is resolved again on disk (``os.path.realpath``) as a second
guard. (Python's own tarfile ``data`` filter is not relied on: 3.11.7's has a symlink-chain bypass.) macOS litter
(``__MACOSX/``, ``._*``, ``.DS_Store``) is skipped and counted: the Decathlon's tar files carry
``._pancreas_XXX.nii.gz`` files that are not images. Extraction goes into a temporary folder next
to the destination, which is renamed to the destination only when every member was written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.common.atomic import atomic_dir
from workflow_scripts.common.errors import InputError
from workflow_scripts.common.files import human_bytes

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


def member_name(archive, raw_name: str) -> str | None:
    """The member's path with '.' and empty parts dropped; refuses absolute paths and '..' (also for bundles)."""
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


def _is_absolute(target: str) -> bool:
    return target.replace("\\", "/").startswith("/") or bool(re.match(r"^[A-Za-z]:", target))


MAX_LINK_HOPS = 40  # as the kernel's limit on symbolic links followed in one path


def resolve_member_path(archive, member: str, path: str, links: dict[str, str], follow_last: bool = True) -> str:
    """`path` (relative to the extraction folder) with every symbolic link in it followed, through
    the links the archive declares (`links`: member name -> target). Raises InputError naming the
    archive and `member` when the path leaves the folder (or is absolute, or loops)."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not resolved:
                raise InputError(archive, f"member {member!r} resolves outside the extraction folder (through the "
                                          f"links in the archive, {path!r} climbs above it); refusing to extract")
            resolved.pop()
            continue
        candidate = "/".join(resolved + [part])
        if candidate in links and (todo or follow_last):
            hops += 1
            target = links[candidate].replace("\\", "/")
            if _is_absolute(target):
                raise InputError(archive, f"member {member!r} resolves through link {candidate!r} to {target!r}, "
                                          "outside the extraction folder; refusing to extract")
            if hops > MAX_LINK_HOPS:
                raise InputError(archive, f"member {member!r}: links in the archive loop (more than {MAX_LINK_HOPS} "
                                          f"followed from {path!r}); refusing to extract")
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo  # relative to the link's folder
            continue
        resolved.append(part)
    return "/".join(resolved)


def check_links(archive, members: list[Member]) -> None:
    """Refuse any member whose path, or whose link target, resolves outside the extraction folder
    through the archive's own symbolic links (all of them, in whatever order they come: a chain
    of links that each look harmless is caught), and hard links to anything but a regular file
    of the archive."""
    links = {m.name: m.link for m in members if m.kind == "symlink"}
    files = {m.name for m in members if m.kind == "file"}
    for m in members:
        parent = m.name.rpartition("/")[0]
        resolve_member_path(archive, m.name, parent, links)  # the folder it is written into
        if m.kind == "symlink":
            if _is_absolute(m.link):
                raise InputError(archive, f"member {m.name!r} is a link to the absolute path {m.link!r}, outside the "
                                          "extraction folder; refusing to extract")
            resolve_member_path(archive, m.name, f"{parent}/{m.link}" if parent else m.link, links)
        elif m.kind == "hardlink":
            target = resolve_member_path(archive, m.name, m.link, links)
            if target not in files:
                raise InputError(archive, f"member {m.name!r} is a hard link to {m.link!r}, which is not a file in "
                                          "the archive; refusing to extract")


def _zip_members(archive, zf: zipfile.ZipFile) -> list[Member]:
    members = []
    for info in zf.infolist():
        name = member_name(archive, info.filename)
        if name is None:
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "replace")
            members.append(Member(name, "symlink", link=target, ref=info))
        elif info.is_dir():
            members.append(Member(name, "dir", ref=info))
        else:
            members.append(Member(name, "file", info.file_size, ref=info))
    return members


def _tar_members(archive, tf: tarfile.TarFile) -> list[Member]:
    members = []
    for info in tf.getmembers():
        name = member_name(archive, info.name)
        if name is None:
            continue
        if info.issym():
            members.append(Member(name, "symlink", link=info.linkname, ref=info))
        elif info.islnk():
            target = info.linkname.replace("\\", "/")
            if _is_absolute(target) or ".." in target.split("/") or not target.strip("/."):
                raise InputError(archive, f"member {name!r} is a hard link to {info.linkname!r}, outside the "
                                          "archive; refusing to extract")
            members.append(Member(name, "hardlink", link=target, ref=info))
        elif info.isdir():
            members.append(Member(name, "dir", ref=info))
        elif info.isfile():
            members.append(Member(name, "file", info.size, ref=info))
        else:
            raise InputError(archive, f"member {info.name!r} is a device or FIFO; refusing to extract")
    return members


def list_members(archive) -> list[Member]:
    """All members, their names checked (absolute paths, '..', devices); links are checked by check_links."""
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return _zip_members(archive, zf)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            return _tar_members(archive, tf)
    raise InputError(archive, "is neither a zip nor a tar archive")


def _inside(root: Path, path: Path) -> bool:
    """Whether `path`, every link in it followed (also where it does not exist yet), lies in `root`."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False


def safe_extract(archive, dest) -> dict:
    """Extract `archive` into the new folder `dest`; returns counts and the regular files written
    (member names = paths relative to `dest`). Nothing is left on failure."""
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise InputError(dest, "extraction target exists already")
    members = list_members(archive)  # every member checked before anything is written
    keep = [m for m in members if not _is_junk(m.name)]
    skipped = len(members) - len(keep)
    check_links(archive, keep)
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
                if not _inside(tmp, folder):  # second guard: the links really on disk, fully resolved
                    raise InputError(archive, f"member {m.name!r} would be written through a link that leads "
                                              "outside the extraction folder; refusing to extract")
                folder.mkdir(parents=True, exist_ok=True)
                if m.kind == "dir":
                    continue
                if target.is_symlink() or target.exists():
                    target.unlink()  # a later member of the same name wins, as with unzip/tar
                if m.kind == "symlink":
                    os.symlink(m.link, target)
                    if not _inside(tmp, target):
                        raise InputError(archive, f"member {m.name!r} is a link that resolves outside the "
                                                  "extraction folder on disk; refusing to extract")
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
    files = sorted(m.name for m in keep if m.kind in ("file", "hardlink"))
    return {"members": len(keep), "bytes": done, "skipped": skipped, "files": files}


def read_top_member(archive, filename: str) -> bytes:
    """One file of a tar archive's single top folder (``<top>/<filename>``), read without extracting."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:*") as tf:
            member = next((m for m in tf.getmembers() if m.isfile() and m.name.count("/") == 1
                           and m.name.endswith(f"/{filename}")), None)
            if member is None:
                raise InputError(archive, f"no {filename} in the archive's top folder")
            return tf.extractfile(member).read()
    except (OSError, tarfile.TarError) as exc:
        raise InputError(archive, f"{filename} cannot be read ({exc})") from None
