"""Collect a training center's out-of-fold predictions from the folds' validation folders.

Every case of a training center was held out by exactly one fold; its mask is copied from that
fold's nnU-Net validation folder. A case missing from every fold, or predicted by two folds, is an
error (it would mean the splits and the manifest disagree).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import pandas as pd

from workflow_scripts.common.atomic import atomic_dir
from workflow_scripts.common.errors import InputError

log = logging.getLogger(__name__)


def collect(cases: pd.DataFrame, validation_dirs, out_dir) -> int:
    found: dict[str, Path] = {}
    for vdir in validation_dirs:
        for f in Path(vdir).glob("*.nii.gz"):
            case = f.name[: -len(".nii.gz")]
            if case in found:
                raise InputError(f, f"case {case} was also predicted by {found[case].parent} (held out twice)")
            found[case] = f
    missing = sorted(set(cases.case_id) - set(found))
    if missing:
        raise InputError(validation_dirs[0], f"no out-of-fold prediction for {len(missing)} cases, e.g. {missing[:3]}")
    with atomic_dir(out_dir) as tmp:
        for case in sorted(cases.case_id):
            shutil.copy2(found[case], tmp / found[case].name)
    return len(cases)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Collect out-of-fold masks of one center.")
    ap.add_argument("--cases", required=True)
    ap.add_argument("--validation", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        n = collect(pd.read_csv(args.cases, sep="\t", dtype=str), args.validation, args.out)
    except InputError as exc:
        log.error("%s", exc)
        return 1
    log.info("collected %d out-of-fold masks into %s", n, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
