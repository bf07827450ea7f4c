"""Turn one center's raw files into validated manifest rows.

Runs per modality x center, so a new or changed center re-validates only itself. It finds the
imagesTr/labelsTr pair at whatever depth it sits, takes the center from the file-name prefix and
the participant from the name-mapping file, checks every pair (see ``pairs.py``) and writes

    <out>.tsv            one row per usable scan (the manifest's columns)
    <out>.excluded.tsv   scans left out and why (only when prepare.on_bad_case is "exclude")

Optional extra annotations of a case (for intra-/inter-rater agreement) sit in folders beside
labelsTr with the label's file name: ``labelsTr_rater2/`` (a second rater) and
``labelsTr_repeat/`` (the same rater again). They are validated like labels (same grid as the
image, values 0/1, some foreground) and fill the optional manifest columns ``label_rater2`` and
``label_repeat`` (empty when a case has none). A bad extra annotation stops the run naming the
file; with prepare.on_bad_case "exclude" only the annotation is dropped (the scan stays) and the
row's notes say why.

A bad scan stops the run with an error naming the file, unless config says to exclude it; an
excluded scan is always listed with its reason. Nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from .atomic import atomic_path, write_table
from .errors import InputError
from .pairs import check_pair

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["case_id", "modality", "center", "participant_id", "image", "label", "role",
                    "data_source", "spacing", "label_voxels", "notes", "label_rater2", "label_repeat"]
# Optional manifest column -> folder beside labelsTr holding that extra annotation.
EXTRA_ANNOTATIONS = {"label_rater2": "labelsTr_rater2", "label_repeat": "labelsTr_repeat"}
IMAGE_RE = re.compile(r"^(?P<case>(?P<center>[A-Za-z0-9]+)_(?P<num>\d+))_0000\.nii(\.gz)?$")
LABEL_RE = re.compile(r"^(?P<case>(?P<center>[A-Za-z0-9]+)_(?P<num>\d+))\.nii(\.gz)?$")
CASE_ID_RE = re.compile(r"^[A-Za-z0-9]+_\d+(_0000)?(\.nii(\.gz)?)?$")


def find_dataset_dirs(root) -> tuple[Path, Path]:
    """Find the single imagesTr/labelsTr pair below `root`, at any depth."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "raw data folder does not exist")
    candidates = sorted(p for p in root.rglob("imagesTr") if p.is_dir() and (p.parent / "labelsTr").is_dir())
    if not candidates:
        raise InputError(root, "no imagesTr folder with a labelsTr beside it was found at any depth")
    if len(candidates) > 1:
        raise InputError(root, "several imagesTr/labelsTr pairs found, expected one: "
                               + ", ".join(str(c.parent) for c in candidates))
    return candidates[0], candidates[0].parent / "labelsTr"


def load_participants(mapping_file, participant_regex: str) -> dict[str, str]:
    """Map anonymised case id -> participant id from a PanSegData name-mapping JSON.

    The file maps original scan names to anonymised ids (the reverse direction is recognised
    too); "Not included" entries are skipped.
    `participant_regex` pulls the participant out of the original name (named group
    ``participant``, or the first group).
    """
    path = Path(mapping_file)
    try:
        mapping = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "name-mapping file does not exist") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"is not valid JSON ({exc})") from None
    if not isinstance(mapping, dict):
        raise InputError(path, "expected a JSON object mapping original names to case ids")
    # The direction of the released files could not be checked (PanSegData's files were not
    # readable to us): accept {original: case id} and its reverse {case id: original}, telling
    # them apart by which side holds <CENTER>_<NNNN> ids.
    keys_are_ids = mapping and all(CASE_ID_RE.match(str(k)) for k in mapping)
    values_are_ids = all(CASE_ID_RE.match(str(v)) for v in mapping.values()
                         if isinstance(v, str) and v.strip().lower() != "not included")
    if keys_are_ids and not values_are_ids:
        mapping = {v: k for k, v in mapping.items() if isinstance(v, str)}
    rx = re.compile(participant_regex or "^(?P<participant>.+)$")
    out: dict[str, str] = {}
    for original, case in mapping.items():
        if not isinstance(case, str) or case.strip().lower() == "not included":
            continue
        m = rx.search(original)
        if not m:
            raise InputError(path, f"original name {original!r} does not match participant_regex {participant_regex!r}")
        pid = m.groupdict().get("participant") or m.group(1 if m.groups() else 0)
        case = re.sub(r"(_0000)?\.nii(\.gz)?$", "", case)
        if case in out and out[case] != pid:
            raise InputError(path, f"case {case} is mapped to two participants ({out[case]}, {pid})")
        out[case] = pid
    return out


def list_center_cases(images_dir: Path, labels_dir: Path, center: str):
    """(case_id, image, label) for one center, plus problems (orphan files) found on the way."""
    images, labels, problems = {}, {}, []
    for f in sorted(images_dir.iterdir()):
        m = IMAGE_RE.match(f.name)
        if m and m["center"] == center:
            images[m["case"]] = f
        elif f.name.startswith(center + "_"):
            problems.append((f.name.split(".")[0], str(f), "not a channel-0 NIfTI image name (<CENTER>_<NNNN>_0000.nii.gz)"))
    for f in sorted(labels_dir.iterdir()):
        m = LABEL_RE.match(f.name)
        if m and m["center"] == center:
            labels[m["case"]] = f
        elif f.name.startswith(center + "_"):
            problems.append((f.name.split(".")[0], str(f), "not a label name (<CENTER>_<NNNN>.nii.gz)"))
    for case in sorted(set(images) - set(labels)):
        problems.append((case, str(images[case]), f"image has no label in {labels_dir}"))
    for case in sorted(set(labels) - set(images)):
        problems.append((case, str(labels[case]), f"label has no image in {images_dir}"))
    pairs = [(c, images[c], labels[c]) for c in sorted(set(images) & set(labels))]
    return pairs, problems


def find_extra_annotations(labels_dir: Path, cases) -> dict[str, dict[str, Path]]:
    """{column: {case: path}} for the extra-annotation folders beside `labels_dir` that exist."""
    found = {}
    for column, folder in EXTRA_ANNOTATIONS.items():
        d = labels_dir.parent / folder
        files = {}
        if d.is_dir():
            for f in sorted(d.iterdir()):
                m = LABEL_RE.match(f.name)
                if m and m["case"] in cases:
                    files[m["case"]] = f
        found[column] = files
    return found


def check_extra_annotation(image, path, fixed_dir, folder, header_mismatch, tolerances) -> Path:
    """Validate one extra annotation like a label; return the path to record (fixed copy if re-written)."""
    check = check_pair(image, path, header_mismatch=header_mismatch, **(tolerances or {}))
    if check.fixed_label is None:
        return Path(path)
    fixed = Path(fixed_dir) / folder / Path(path).name
    with atomic_path(fixed) as tmp:
        sitk.WriteImage(check.fixed_label, str(tmp), useCompression=True)
    return fixed


def prepare_center(raw_root, modality, center, role, out_tsv, fixed_dir, mapping_file=None,
                   participant_regex=None, on_bad_case="error", header_mismatch="error", data_source="",
                   tolerances=None):
    """Validate one center's scans and write its manifest rows; return (rows, excluded)."""
    images_dir, labels_dir = find_dataset_dirs(raw_root)
    pairs, problems = list_center_cases(images_dir, labels_dir, center)
    if not pairs and not problems:
        raise InputError(images_dir, f"no scans of center {center} ({center}_NNNN_0000.nii.gz) found")
    participants = load_participants(mapping_file, participant_regex) if mapping_file else {}
    extras = find_extra_annotations(labels_dir, {c for c, _, _ in pairs})
    rows, excluded = [], list(problems)
    unmapped = 0
    for i, (case, image, label) in enumerate(pairs, 1):
        try:
            check = check_pair(image, label, header_mismatch=header_mismatch, **(tolerances or {}))
        except InputError as exc:
            excluded.append((case, exc.path, exc.problem))
            continue
        label_path = label
        if check.fixed_label is not None:
            label_path = Path(fixed_dir) / label.name
            with atomic_path(label_path) as tmp:
                sitk.WriteImage(check.fixed_label, str(tmp), useCompression=True)
        pid = participants.get(case)
        if pid is None:
            pid, unmapped = case, unmapped + 1
        annotations = {}
        for column, files in extras.items():
            if case not in files:
                annotations[column] = ""
                continue
            try:
                annotations[column] = str(check_extra_annotation(image, files[case], fixed_dir,
                                                                 EXTRA_ANNOTATIONS[column], header_mismatch,
                                                                 tolerances))
            except InputError as exc:
                if on_bad_case != "exclude":
                    raise
                log.warning("DROPPED %s of %s %s: %s", column, modality, case, exc)
                annotations[column] = ""
                check.notes.append(f"{column} dropped ({exc.problem})")
        rows.append(dict(case_id=case, modality=modality, center=center, participant_id=pid, image=str(image),
                         label=str(label_path), role=role, data_source=data_source,
                         spacing="x".join(f"{s:.4g}" for s in check.spacing), label_voxels=check.label_voxels,
                         notes="; ".join(check.notes), **annotations))
        if i % 25 == 0:
            log.info("%s %s: checked %d/%d pairs", modality, center, i, len(pairs))

    excluded_df = pd.DataFrame(excluded, columns=["case_id", "file", "reason"])
    excluded_df.insert(1, "modality", modality)
    excluded_df.insert(2, "center", center)
    if len(excluded_df) and on_bad_case != "exclude":
        first = excluded_df.iloc[0]
        more = f" (and {len(excluded_df) - 1} more problems)" if len(excluded_df) > 1 else ""
        raise InputError(first["file"], f"{first['reason']}{more}; set prepare.on_bad_case: exclude to leave "
                                        "bad scans out with a reason")
    if not rows:
        raise InputError(images_dir, f"center {center}: no usable scans left after validation")
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for _, r in excluded_df.iterrows():
        log.warning("EXCLUDED %s %s (%s): %s", modality, r.case_id, r.file, r.reason)
    log.info("%s %s: %d scans kept, %d excluded, %d without a participant mapping (own id used), "
             "%d label headers fixed; extra annotations: %d second rater, %d repeat", modality, center, len(df),
             len(excluded_df), unmapped, int(df.notes.str.contains("label ").sum()),
             int((df.label_rater2 != "").sum()), int((df.label_repeat != "").sum()))
    write_table(excluded_df, Path(str(out_tsv).replace(".tsv", ".excluded.tsv")))
    write_table(df, out_tsv)
    return df, excluded_df


def main(argv=None):
    ap = argparse.ArgumentParser(description="Validate one center's scans and write its manifest rows.")
    ap.add_argument("--raw", required=True, help="folder holding imagesTr/labelsTr at any depth")
    ap.add_argument("--modality", required=True)
    ap.add_argument("--center", required=True)
    ap.add_argument("--role", required=True, choices=["train-cv", "external"])
    ap.add_argument("--out", required=True, help="<name>.tsv; <name>.excluded.tsv is written beside it")
    ap.add_argument("--fixed-dir", required=True, help="where labels re-written with their image's geometry go")
    ap.add_argument("--mapping")
    ap.add_argument("--participant-regex")
    ap.add_argument("--on-bad-case", default="error", choices=["error", "exclude"])
    ap.add_argument("--label-header-mismatch", default="error", choices=["error", "use_image"])
    ap.add_argument("--data-source", default="")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        prepare_center(args.raw, args.modality, args.center, args.role, args.out, args.fixed_dir, args.mapping,
                       args.participant_regex, args.on_bad_case, args.label_header_mismatch, args.data_source)
    except InputError as exc:
        log.error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
