"""Turn one center's raw files into validated manifest rows.

Runs per modality x center, so a new or changed center re-validates only itself. It finds the
imagesTr/labelsTr pair at whatever depth it sits, takes the inventory of every file there
(``inventory.py``: names, centers, misfits), the participant from the name-mapping file, checks
every pair (``pairs.py``: both files fully decoded) and writes

    <out>.tsv            one row per usable scan (the manifest's columns)
    <out>.excluded.tsv   every file of the center left out and why (case_id, modality, center,
                         file, reason, origin: the user's own file or archive member it came from)

Optional extra annotations of a case (for intra-/inter-rater agreement) sit in folders beside
labelsTr with the label's file name: ``labelsTr_rater2/`` (a second rater) and
``labelsTr_repeat/`` (the same rater again). They are validated like labels (same grid as the
image, values 0/1, some foreground) and fill the optional manifest columns ``label_rater2`` and
``label_repeat`` (empty when a case has none). A bad extra annotation stops the run naming the
file; with prepare.on_bad_case "exclude" only the annotation is dropped (the scan stays) and the
row's notes say why.

Every file of the center ends up in one of the two tables: a misnamed file, an orphan, a second
channel, a file an import could not bring in, a file that does not decode or a pair that does not
fit. With prepare.on_bad_case "error" any of them stops the run, the message naming the files (and
the user's own files they came from) and the problems; with "exclude" they are listed with their
reasons. Nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import json
import logging
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from workflow_scripts.common.atomic import FILE_MODE, write_table
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.inventory import EXTRA_ANNOTATIONS, IMAGE_RE, LABEL_RE, Origins, dataset_inventory, find_dataset_dirs  # noqa: F401
from workflow_scripts.data.image_checks import check_image, check_label

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["case_id", "modality", "center", "participant_id", "image", "label", "role",
                    "data_source", "spacing", "label_voxels", "notes", "label_rater2", "label_repeat"]
EXCLUDED_COLUMNS = ["case_id", "modality", "center", "file", "reason", "origin"]
CASE_ID_RE = re.compile(r"^[A-Za-z0-9]+_\d+(_0000)?(\.nii(\.gz)?)?$")
MAX_LISTED = 5  # problems spelled out in one error message


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


def center_cases(entries):
    """Split one center's inventory entries into pairs, extra annotations and problems.

    Returns (pairs [(case, image, label)], extras {column: {case: path}}, problems [(case, file, reason)]).
    """
    images, labels, problems = {}, {}, []
    extras = {column: {} for column in EXTRA_ANNOTATIONS}
    column_of = {folder: column for column, folder in EXTRA_ANNOTATIONS.items()}
    for e in entries:
        if e.problem:
            problems.append((e.case, e.path, e.problem))
        elif e.kind == "image":
            images[e.case] = e.path
        elif e.kind == "label":
            labels[e.case] = e.path
        else:
            extras[column_of[e.kind]][e.case] = e.path
    for case in sorted(set(images) - set(labels)):
        problems.append((case, images[case], f"image has no label ({case}.nii.gz) in labelsTr"))
    for case in sorted(set(labels) - set(images)):
        problems.append((case, labels[case], f"label has no image ({case}_0000.nii.gz) in imagesTr"))
    cases = set(images) & set(labels)
    for column, files in extras.items():
        for case in sorted(set(files) - cases - {c for c, _, _ in problems}):
            problems.append((case, files.pop(case), f"{EXTRA_ANNOTATIONS[column]} annotation has no image/label "
                                                    "pair of the same name"))
    pairs = [(c, images[c], labels[c]) for c in sorted(cases)]
    return pairs, extras, problems


def write_fixed(image, fixed_dir, relative) -> Path:
    """Write a re-headed label; an identical file already there is left alone (its time stamp too),
    so re-running preparation on unchanged inputs changes nothing that training reads."""
    path = Path(fixed_dir) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".part-") as work:
        tmp = Path(work) / path.name
        sitk.WriteImage(image, str(tmp), useCompression=True)
        if not (path.exists() and filecmp.cmp(tmp, path, shallow=False)):
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
    return path


def _listed(problems, origin) -> str:
    """The first problems spelled out, each naming its file and, where known, the user's own file."""
    parts = []
    for _, file, reason in problems[:MAX_LISTED]:
        src = origin(file)
        parts.append(f"{file}{f' (from {src})' if src else ''}: {reason}")
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return "; ".join(parts) + more


def prepare_center(raw_root, modality, center, role, out_tsv, fixed_dir, mapping_file=None,
                   participant_regex=None, on_bad_case="error", header_mismatch="error", data_source="",
                   tolerances=None):
    """Validate one center's scans and write its manifest rows; return (rows, excluded)."""
    images_dir, labels_dir = find_dataset_dirs(raw_root)
    inventory = dataset_inventory(images_dir, labels_dir)
    origin = Origins(raw_root)
    pairs, extras, problems = center_cases(inventory.of_center(center))
    if not pairs and not problems:
        raise InputError(images_dir, f"no scans of center {center} ({center}_NNNN_0000.nii.gz) found; the folder "
                                     f"holds centers {sorted(inventory.centers)}")
    participants = load_participants(mapping_file, participant_regex) if mapping_file else {}
    rows, excluded = [], list(problems)
    unmapped = 0
    for i, (case, image_path, label_path) in enumerate(pairs, 1):
        try:
            image = check_image(image_path)
            check = check_label(image, label_path, header_mismatch=header_mismatch, **(tolerances or {}))
        except InputError as exc:
            excluded.append((case, exc.path, exc.problem))
            continue
        if check.fixed_label is not None:
            label_path = write_fixed(check.fixed_label, fixed_dir, label_path.name)
        pid = participants.get(case)
        if pid is None:
            pid, unmapped = case, unmapped + 1
        annotations = {}
        for column, files in extras.items():
            annotations[column] = ""
            if case not in files:
                continue
            try:
                extra = check_label(image, files[case], header_mismatch=header_mismatch, **(tolerances or {}))
            except InputError as exc:
                if on_bad_case != "exclude":
                    excluded.append((case, exc.path, exc.problem))
                    continue
                log.warning("DROPPED %s of %s %s: %s", column, modality, case, exc)
                check.notes.append(f"{column} dropped ({exc.problem})")
                continue
            path = files[case] if extra.fixed_label is None else \
                write_fixed(extra.fixed_label, fixed_dir, Path(EXTRA_ANNOTATIONS[column]) / files[case].name)
            annotations[column] = str(path)
        rows.append(dict(case_id=case, modality=modality, center=center, participant_id=pid, image=str(image_path),
                         label=str(label_path), role=role, data_source=data_source,
                         spacing="x".join(f"{s:.4g}" for s in check.spacing), label_voxels=check.label_voxels,
                         notes="; ".join(check.notes), **annotations))
        if i % 25 == 0:
            log.info("%s %s: checked %d/%d pairs", modality, center, i, len(pairs))

    excluded.sort(key=lambda r: (str(r[0]), str(r[1])))
    if excluded and on_bad_case != "exclude":
        raise InputError(excluded[0][1], f"{len(excluded)} problem(s) in center {center}: {_listed(excluded, origin)}. "
                                         "Fix the files, or set prepare.on_bad_case: exclude to leave bad scans "
                                         "out with a reason")
    if not rows:
        raise InputError(images_dir, f"center {center}: no usable scans left after validation: "
                                     f"{_listed(excluded, origin)}")
    excluded_df = pd.DataFrame([dict(case_id=case, modality=modality, center=center, file=str(file), reason=reason,
                                     origin=origin(file)) for case, file, reason in excluded], columns=EXCLUDED_COLUMNS)
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for r in excluded_df.itertuples():
        log.warning("EXCLUDED %s %s (%s%s): %s", modality, r.case_id, r.file, f", from {r.origin}" if r.origin else "",
                    r.reason)
    log.info("%s %s: %d scans kept, %d excluded, %d without a participant mapping (own id used), "
             "%d label headers fixed; extra annotations: %d second rater, %d repeat; %d macOS litter files "
             "skipped in the folder", modality, center, len(df), len(excluded_df), unmapped,
             int(df.notes.str.contains("label ").sum()), int((df.label_rater2 != "").sum()),
             int((df.label_repeat != "").sum()), inventory.litter)
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
