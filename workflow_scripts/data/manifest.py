"""Concatenate the per-center tables into data/manifest.tsv and validate it against its schema.

The manifest is the study's one table (one row per scan). Validation: every row against
config/schemas/manifest.schema.yaml (Snakemake's validate), unique case ids per modality, and the
center in each case id's prefix. Excluded scans of all centers are gathered into one table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from workflow_scripts.common.atomic import write_table
from workflow_scripts.common.errors import InputError
from workflow_scripts.data.prepare import EXCLUDED_COLUMNS

log = logging.getLogger(__name__)


def validate_rows(df: pd.DataFrame, schema_path) -> None:
    """Check every row against the manifest's JSON schema; the error names the case and the key."""
    import jsonschema
    import yaml

    validator = jsonschema.Draft202012Validator(yaml.safe_load(Path(schema_path).read_text()))
    for row in df.to_dict("records"):
        if row.get("label_voxels", "") != "":
            row["label_voxels"] = int(row["label_voxels"])
        error = jsonschema.exceptions.best_match(validator.iter_errors(row))
        if error is not None:
            key = ".".join(str(p) for p in error.path) or "row"
            raise InputError(schema_path, f"manifest row {row.get('case_id')!r}, key {key!r}: {error.message}")


def build_manifest(tables, schema=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames, excluded = [], []
    for t in tables:
        frames.append(pd.read_csv(t, sep="\t", dtype=str, keep_default_na=False))
        ex = Path(str(t).replace(".tsv", ".excluded.tsv"))
        if ex.exists():
            excluded.append(pd.read_csv(ex, sep="\t", dtype=str, keep_default_na=False))
    df = pd.concat(frames, ignore_index=True).sort_values(["modality", "case_id"]).reset_index(drop=True)
    dup = df[df.duplicated(["modality", "case_id"], keep=False)]
    if len(dup):
        raise InputError(tables[0], f"duplicate case ids: {dup.case_id.unique()[:5].tolist()}")
    wrong = df[df.case_id.str.split("_").str[0] != df.center]
    if len(wrong):
        raise InputError(tables[0], f"case ids whose prefix is not their center: {wrong.case_id.tolist()[:5]}")
    if schema:
        validate_rows(df, schema)
    ex = pd.concat(excluded, ignore_index=True) if excluded else pd.DataFrame(columns=EXCLUDED_COLUMNS)
    # A misfit no center's name claims (e.g. scan4_0000.nii.gz) is reported by every center of its folder: once here.
    ex = ex.drop_duplicates(["modality", "file", "reason"]).reset_index(drop=True)
    return df, ex


# The workflow's own schema, found from the package (not passed as a path: an absolute path in a
# rule's params would re-run the rule in every other checkout of the workflow).
SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schemas" / "manifest.schema.yaml"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build and validate data/manifest.tsv.")
    ap.add_argument("--tables", nargs="+", required=True)
    ap.add_argument("--schema", default=str(SCHEMA), help="manifest JSON schema (default: the workflow's own)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--excluded", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        df, ex = build_manifest(args.tables, args.schema)
    except InputError as exc:
        log.error("%s", exc)
        return 1
    write_table(ex, args.excluded)
    write_table(df, args.out)
    counts = df.groupby(["modality", "role"]).size().to_dict()
    log.info("manifest: %d scans, %d participants; by modality and role %s; %d excluded", len(df),
             df.participant_id.nunique(), counts, len(ex))
    return 0


if __name__ == "__main__":
    sys.exit(main())
