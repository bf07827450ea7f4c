"""Every file of a dataset folder, named and placed: the inventory prepare works from.

A dataset folder holds ``imagesTr/`` and ``labelsTr/`` side by side (and optionally the extra
annotation folders ``labelsTr_rater2/``, ``labelsTr_repeat/``). Every file in them, at any depth,
is one ``Entry``: a well-named image (``<CENTER>_<NNNN>_0000.nii.gz``), label or annotation
(``<CENTER>_<NNNN>.nii.gz``), or a misfit with its problem (a wrong name, a second channel, a
file in a sub-folder, a second file for one case). Only the documented litter is skipped, and
counted: ``__MACOSX/``, ``._*`` and ``.DS_Store``.

Each entry belongs to a center: a well-named file to the center in its name; a misfit to the
center its name starts with when that matches (case-insensitively) a center of the folder's
well-named files (``ahn_0004_0000.nii.gz`` and ``AHN-0004_0000.nii.gz`` belong to AHN);
otherwise (``scan4_0000.nii.gz``) to every center of the folder, so that no center's preparation
can overlook it. Snakemake lists the same files as each center's inputs (``rules/common.smk``):
editing, fixing, adding or removing any of them re-runs that center's preparation.

A source import that could not bring a file into the layout at all (e.g. a case whose label could
not be merged) lists it in ``import_problems.tsv`` beside ``imagesTr``; those files count as the
center's misfits too. ``origins.tsv`` (written by the sources) maps each file to where it came
from (the user's own file, or an archive member), so that messages name what the user can find.
"""

from __future__ import annotations

import csv
from collections import Counter
import os
import re
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.common.errors import InputError

# Optional extra annotations: manifest column -> folder beside labelsTr.
EXTRA_ANNOTATIONS = {"label_rater2": "labelsTr_rater2", "label_repeat": "labelsTr_repeat"}
FOLDERS = {"imagesTr": "image", "labelsTr": "label", **{f: f for f in EXTRA_ANNOTATIONS.values()}}
IMAGE_RE = re.compile(r"^(?P<case>(?P<center>[A-Za-z0-9]+)_(?P<num>\d+))_0000\.nii(\.gz)?$")
CHANNEL_RE = re.compile(r"^(?P<case>(?P<center>[A-Za-z0-9]+)_(?P<num>\d+))_(?P<channel>\d{4})\.nii(\.gz)?$")
LABEL_RE = re.compile(r"^(?P<case>(?P<center>[A-Za-z0-9]+)_(?P<num>\d+))\.nii(\.gz)?$")
LEADING_NAME = re.compile(r"^[A-Za-z0-9]+")
IMPORT_PROBLEMS = "import_problems.tsv"
ORIGINS = "origins.tsv"


def is_litter(rel_parts) -> bool:
    """macOS metadata: __MACOSX/ folders, AppleDouble ._* files, .DS_Store."""
    return "__MACOSX" in rel_parts or rel_parts[-1].startswith("._") or rel_parts[-1] == ".DS_Store"


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str  # image, label, or the extra annotation folder's name
    case: str  # <CENTER>_<NNNN>, or for a misfit its name without extension
    center: str  # the center it belongs to ("" = every center of the folder)
    problem: str = ""


@dataclass
class Inventory:
    images_dir: Path
    labels_dir: Path
    entries: list[Entry]
    litter: int  # documented litter skipped
    centers: set[str]  # centers of the well-named files

    def of_center(self, center: str) -> list[Entry]:
        return [e for e in self.entries if e.center in (center, "")]


def find_dataset_dirs(root) -> tuple[Path, Path]:
    """Find the single imagesTr/labelsTr pair below `root`, at any depth."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "raw data folder does not exist")
    candidates = sorted(p for p in root.rglob("imagesTr") if p.is_dir() and (p.parent / "labelsTr").is_dir()
                        and not is_litter(p.relative_to(root).parts))
    if not candidates:
        raise InputError(root, "no imagesTr folder with a labelsTr beside it was found at any depth")
    if len(candidates) > 1:
        raise InputError(root, "several imagesTr/labelsTr pairs found, expected one: "
                               + ", ".join(str(c.parent) for c in candidates))
    return candidates[0], candidates[0].parent / "labelsTr"


def _files(folder: Path) -> tuple[list[Path], int]:
    """Every file below `folder` (links included, sorted), and the number of litter files skipped."""
    files, litter = [], 0
    if not folder.is_dir():
        return files, litter
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder).parts
        for name in sorted(filenames):
            if is_litter(rel + (name,)):
                litter += 1
            else:
                files.append(Path(dirpath) / name)
    return files, litter


def _classify(folder_name: str, path: Path, depth: int) -> tuple[str, str, str]:
    """(case, center, problem) from a file's name; problem "" for a well-named file."""
    name = path.name
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    if depth > 1:
        return stem, "", f"in a sub-folder of {folder_name}; files must lie directly in it"
    if folder_name == "imagesTr":
        m = IMAGE_RE.match(name)
        if m:
            return m["case"], m["center"], ""
        m = CHANNEL_RE.match(name)
        if m:
            return m["case"], m["center"], (f"image channel {m['channel']}: only single-channel scans "
                                            f"(<CENTER>_<NNNN>_0000.nii.gz) are supported")
        return stem, "", "not a channel-0 NIfTI image name (<CENTER>_<NNNN>_0000.nii.gz)"
    m = LABEL_RE.match(name)
    if m:
        return m["case"], m["center"], ""
    what = "label" if folder_name == "labelsTr" else f"{folder_name} annotation"
    return stem, "", f"not a {what} name (<CENTER>_<NNNN>.nii.gz)"


def dataset_inventory(images_dir, labels_dir) -> Inventory:
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    base = images_dir.parent
    raw: list[tuple[Path, str, str, str, str]] = []
    litter = 0
    for folder_name, kind in FOLDERS.items():
        folder = images_dir if kind == "image" else labels_dir if kind == "label" else base / folder_name
        files, skipped = _files(folder)
        litter += skipped
        for f in files:
            case, center, problem = _classify(folder_name, f, len(f.relative_to(folder).parts))
            raw.append((f, kind, case, center, problem))
    counts = Counter(center for _, _, _, center, problem in raw if center and not problem)
    # Centers that differ only in case (ahn_0004 beside AHN_0001...): the one most files use is the
    # center, the others' files are misfits of it.
    by_upper: dict[str, str] = {}
    for center, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        by_upper.setdefault(center.upper(), center)
    centers = set(by_upper.values())
    raw = [(f, kind, case, center, problem or (f"center {center!r} in the name differs from {by_upper[center.upper()]!r}"
                                                 " only in letter case" if center and center not in centers else ""))
           for f, kind, case, center, problem in raw]
    entries, seen = [], {}
    for f, kind, case, center, problem in raw:
        if problem and not center:
            guess = LEADING_NAME.match(f.name)
            center = by_upper.get(guess[0].upper(), "") if guess else ""
        elif problem and center not in centers:  # e.g. a lone _0001 file of a center with no good file
            center = by_upper.get(center.upper(), "")
        if not problem:
            first = seen.setdefault((kind, case), f)
            if first != f:
                problem = f"a second {kind} file for case {case} (beside {first.name})"
        entries.append(Entry(f, kind, case, center, problem))
    entries += import_problems(base)
    return Inventory(images_dir, labels_dir, entries, litter, centers)


def import_problems(dataset_dir: Path) -> list[Entry]:
    """Files a source import could not bring into the layout (``import_problems.tsv``)."""
    path = Path(dataset_dir) / IMPORT_PROBLEMS
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [Entry(Path(r["file"]), "import", r["case_id"], r["center"], r["problem"]) for r in rows]


def write_import_problems(dataset_dir: Path, rows: list[dict]) -> None:
    """rows: file (the user's own file or archive member), case_id, center, problem."""
    from workflow_scripts.common.atomic import atomic_path

    with atomic_path(Path(dataset_dir) / IMPORT_PROBLEMS) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, ["file", "case_id", "center", "problem"], delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["case_id"], r["file"])))


def write_origins(folder: Path, origins: dict[str, str]) -> None:
    """``origins.tsv`` in `folder`: each file (path relative to `folder`) -> where it came from."""
    from workflow_scripts.common.atomic import atomic_path

    with atomic_path(Path(folder) / ORIGINS) as tmp, tmp.open("w", encoding="utf-8", newline="") as f:
        f.write("file\torigin\n")
        for rel, origin in sorted(origins.items()):
            f.write(f"{rel}\t{origin}\n")


class Origins:
    """Where the files below a raw folder came from: ``origins.tsv`` in the folder or an ancestor,
    else a link's target."""

    def __init__(self, raw_root):
        self.base, self.table = None, {}
        for folder in [Path(raw_root), *Path(raw_root).parents]:
            candidate = folder / ORIGINS
            if candidate.is_file():
                with candidate.open(encoding="utf-8") as f:
                    rows = list(csv.reader(f, delimiter="\t"))
                if rows and rows[0] == ["file", "origin"]:
                    self.base, self.table = folder, {r[0]: r[1] for r in rows[1:] if len(r) == 2}
                    break

    def __call__(self, path) -> str:
        path = Path(path)
        if self.base is not None:
            try:
                origin = self.table.get(path.relative_to(self.base).as_posix())
            except ValueError:
                origin = None
            if origin:
                return origin
        if path.is_symlink():
            return os.path.realpath(path)
        return ""


def center_input_files(raw_root, center: str) -> list[str]:
    """Every file preparing `center` reads or reports (Snakemake's inputs of prepare_center);
    [] when the folder holds no dataset yet."""
    try:
        images_dir, labels_dir = find_dataset_dirs(raw_root)
    except InputError:
        return []
    inv = dataset_inventory(images_dir, labels_dir)
    # Files an import could not bring in are the user's own (their source lists them as inputs).
    return sorted({str(e.path) for e in inv.of_center(center) if e.kind != "import" and os.path.exists(e.path)})


def folder_files(root) -> list[str]:
    """Every file below a user's source folder (local_source's inputs): litter, hidden folders
    (.git, ...) and dangling links aside."""
    out = []
    for dirpath, dirnames, filenames in os.walk(Path(root), followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        out += [os.path.join(dirpath, n) for n in sorted(filenames)
                if not is_litter((n,)) and os.path.exists(os.path.join(dirpath, n))]
    return out
