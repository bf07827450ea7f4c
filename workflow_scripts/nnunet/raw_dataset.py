"""Write one modality's nnU-Net v2 raw dataset from the training centers' manifest rows.

Images and labels are linked, not copied (the study's raw data is large); dataset.json asks for
nnU-Net's NibabelIOWithReorient so that mixed orientations (docs/facts.md §3) are reoriented on read and
predictions are written back in each scan's own orientation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from workflow_scripts.nnunet.env import dataset_name

log = logging.getLogger(__name__)


def channel_name(modality: str) -> str:
    # "CT" switches nnU-Net to its CT normalisation (clip to foreground percentiles, global z-score);
    # any other name gets per-image z-scoring, right for MRI.
    return "CT" if modality.upper() == "CT" else modality


def write_raw_dataset(cases: pd.DataFrame, out_root, dataset_id: int, modality: str, description: str = "") -> Path:
    out_root = Path(out_root)
    final = out_root / dataset_name(dataset_id, modality)
    tmp = out_root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    for row in cases.sort_values("case_id").itertuples():
        os.symlink(Path(row.image).resolve(), tmp / "imagesTr" / f"{row.case_id}_0000.nii.gz")
        os.symlink(Path(row.label).resolve(), tmp / "labelsTr" / f"{row.case_id}.nii.gz")
    dataset = {
        "channel_names": {"0": channel_name(modality)},
        "labels": {"background": 0, "pancreas": 1},
        "numTraining": int(len(cases)),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "NibabelIOWithReorient",
        "name": f"PanSeg {modality}",
        "description": description,
        "centers": sorted(cases.center.unique().tolist()),
    }
    (tmp / "dataset.json").write_text(json.dumps(dataset, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    log.info("wrote %s with %d training cases from centers %s", final, len(cases), dataset["centers"])
    return final


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a modality's nnU-Net raw dataset (training centers only).")
    ap.add_argument("--cases", nargs="+", required=True, help="per-center manifest TSVs")
    ap.add_argument("--out-root", required=True)
    ap.add_argument("--dataset-id", type=int, required=True)
    ap.add_argument("--modality", required=True)
    ap.add_argument("--description", default="")
    ap.add_argument("--data-kind", help='e.g. "SYNTHETIC": the description becomes "PanSeg <modality> (<kind> data)"')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cases = pd.concat([pd.read_csv(f, sep="\t", dtype=str) for f in args.cases], ignore_index=True)
    description = f"PanSeg {args.modality} ({args.data_kind} data)" if args.data_kind else args.description
    write_raw_dataset(cases, args.out_root, args.dataset_id, args.modality, description)


if __name__ == "__main__":
    main()
