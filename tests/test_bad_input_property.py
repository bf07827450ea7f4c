"""Property-based check of bad input: damage any one file of a small source, in any way, and the run
either stops with a clear InputError naming that file, or accepts data equal to the original;
never a traceback, never a silently shorter study.

Each example copies a pristine source (PanSegData layout prepared directly, or an nnU-Net raw or a
Decathlon folder imported as a local source first, the Decathlon labels rewritten by merging), truncates a file, flips one bit of a .nii.gz, or renames a file
(near-miss names, other folders, random text), and prepares every center in one prepare mode.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from source_data import case_pair
from workflow_scripts.data.decode import read_nifti
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.prepare import prepare_center
from workflow_scripts.data.sources import local

SOURCES = {"panseg": ("AHN", "MCF"), "nnunet": ("ABC",), "decathlon": ("MSD",)}


def build(root: Path, kind: str) -> Path:
    src = root / kind
    if kind == "panseg":
        for ci, center in enumerate(SOURCES["panseg"]):
            for k in (1, 2):
                ext = ".nii" if (center, k) == ("MCF", 2) else ".nii.gz"  # one uncompressed pair
                case_pair(src / "imagesTr" / f"{center}_{k:04d}_0000{ext}", src / "labelsTr" / f"{center}_{k:04d}{ext}",
                          seed=ci * 10 + k)
    elif kind == "nnunet":
        for k in (1, 2, 3):
            case_pair(src / "imagesTr" / f"case_{k}_0000.nii.gz", src / "labelsTr" / f"case_{k}.nii.gz", seed=k)
    else:  # Decathlon: labels merged (rewritten) by the import
        for k in (1, 2, 3):
            case_pair(src / "imagesTr" / f"pancreas_00{k}.nii.gz", src / "labelsTr" / f"pancreas_00{k}.nii.gz", seed=k)
    return src


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    sources = {kind: build(root, kind) for kind in SOURCES}
    arrays = {kind: {p.relative_to(src).as_posix(): np.array(read_nifti(p).array) for p in src.rglob("*.nii*")}
              for kind, src in sources.items()}
    return sources, arrays


def case_of(rel: str) -> str:
    """Original case of a file (relative path) of the pristine sources."""
    name = rel.split("/")[-1].split(".")[0]
    return name[:-5] if name.endswith("_0000") else name


NEAR_MISS = st.builds(lambda center, sep, num, suffix: f"{center}{sep}{num:04d}{suffix}",
                      st.sampled_from(["AHN", "ahn", "MCF", "XYZ", "scan", "case", "case_1"]),
                      st.sampled_from(["_", "-", ""]), st.integers(0, 12),
                      st.sampled_from(["_0000.nii.gz", ".nii.gz", "_0001.nii.gz", "_0000.nii", ".nii", ".nii.gz.bak",
                                       "_0000.NII.GZ", ".nii.gz "]))
RANDOM_NAME = st.text(st.sampled_from("abcAB09_-. "), min_size=1, max_size=16)
DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("bitflip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
    st.tuples(st.just("rename"), st.one_of(NEAR_MISS, RANDOM_NAME), st.booleans()),
)


def damage(src: Path, rel: str, how) -> Path | None:
    """Apply `how` to src/rel; return the damaged file's path now (None: no damage made)."""
    path = src / rel
    data = path.read_bytes()
    if how[0] == "truncate":
        path.write_bytes(data[: int(how[1] * len(data))])
        return path
    if how[0] == "bitflip":
        if not rel.endswith(".gz"):
            return None
        flipped = bytearray(data)
        flipped[int(how[1] * len(data))] ^= 1 << how[2]
        path.write_bytes(bytes(flipped))
        return path
    _, name, other_folder = how
    folder = path.parent
    if other_folder:
        folder = folder.parent / ("labelsTr" if folder.name == "imagesTr" else "imagesTr")
    new = folder / name
    if name in (".", "..") or new.exists():
        return None
    path.rename(new)
    return new


def run(src: Path, work: Path, kind: str, mode: str):
    """Prepare every center: {center: message of the InputError, or (table, excluded)}."""
    raw = src
    if kind != "panseg":
        raw = work / "raw"
        settings = {"path": str(src), "center": SOURCES[kind][0], "foreground_labels": [1] if kind == "decathlon" else None}
        local.fetch(settings, raw)  # imports never stop for a bad case
    out = {}
    for center in SOURCES[kind]:
        try:
            out[center] = prepare_center(raw, "CT", center, "train-cv", work / "prep" / f"{center}.tsv",
                                         work / "fixed", on_bad_case=mode, data_source="test")
        except InputError as exc:
            out[center] = str(exc)
    return out


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(SOURCES)), index=st.integers(0, 11), how=DAMAGE,
       mode=st.sampled_from(["error", "exclude"]))
def test_damaged_file_is_named_or_harmless(pristine, tmp_path_factory, kind, index, how, mode):
    sources, arrays = pristine
    work = tmp_path_factory.mktemp("example")
    src = work / "src"
    shutil.copytree(sources[kind], src)
    files = sorted(arrays[kind])
    rel = files[index % len(files)]
    damaged = damage(src, rel, how)
    if damaged is None:
        event("no damage made (name taken, or a bit flip asked of an uncompressed file)")
        return
    hit_case = case_of(rel)
    outcomes = run(src, work, kind, mode)
    errors = {c: o for c, o in outcomes.items() if isinstance(o, str)}
    event(f"{how[0]}, {mode}: {'input error' if errors else 'accepted'}")
    # Every error names the damaged file, or the file of the same case it left without its partner.
    partners = {f"{r.split('/')[-1]}" for r in files if case_of(r) == hit_case}
    for center, message in errors.items():
        assert str(damaged) in message or any(p in message for p in partners), (center, message)
    if mode == "exclude":  # only a center with no usable scan left stops (a rename can hit both of its cases)
        assert all("no usable scans left" in m for m in errors.values()), errors
    kept = pd.concat([o[0] for o in outcomes.values() if not isinstance(o, str)] or [pd.DataFrame()])
    excluded = pd.concat([o[1] for o in outcomes.values() if not isinstance(o, str)] or [pd.DataFrame()])
    if not errors:
        # Whatever was accepted decodes to the original arrays...
        for row in kept.itertuples():
            for column, name in (("image", f"{row.case_id}_0000"), ("label", row.case_id)):
                original = [a for r, a in arrays[kind].items() if Path(r).name.split(".")[0] == name or
                            (kind != "panseg" and _imported(r, row.case_id, column, SOURCES[kind][0]))]
                assert len(original) == 1, (row, column)
                assert np.array_equal(read_nifti(getattr(row, column)).array, original[0])
        # ... and no case went missing without a word.
        n_cases = len({case_of(r) for r in files})
        accounted = set(kept.case_id) | set(excluded.case_id)
        assert len(accounted) >= n_cases, (kept.case_id.tolist(), excluded)  # a rename may hit two cases
        if len(kept) < n_cases:
            named = set(excluded.file) | set(excluded.origin)
            assert str(damaged) in named or any(Path(f).name in partners for f in named), excluded


def _imported(rel: str, case_id: str, column: str, center: str) -> bool:
    """Whether pristine file `rel` is the image/label imported as `case_id` (case_k, pancreas_00k -> <CENTER>_000k)."""
    number = int(re.search(r"(\d+)$", case_of(rel))[1])
    folder = "imagesTr" if column == "image" else "labelsTr"
    return case_id == f"{center}_{number:04d}" and rel.startswith(folder)
