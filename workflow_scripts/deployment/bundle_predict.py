"""Run a bundle on a table of scans: the model, built as its bundle says (nnU-Net v2's predictor for
native bundles, v1's semantics for imported ones), and one mask per case.

    python -m workflow_scripts.bundle predict --bundle B.tar --cases cases.tsv --out DIR \
        [--device auto|cpu|cuda] [--threads N] [--mirroring|--no-mirroring] [--step-size S]

``cases.tsv`` has the columns ``case_id`` and ``image`` (other columns are ignored); each case's mask
is written as ``DIR/<case_id>.nii.gz`` in the scan's geometry, under a temporary name first, so a
mask in DIR is always complete. The bundle is verified before anything runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from workflow_scripts.common.errors import InputError

log = logging.getLogger(__name__)


def load_predictor(bundle, device, mirroring=None, step_size=None):
    """(predictor, mirroring, step_size) for an extracted bundle; None settings take the bundle's defaults.
    A model that cannot be loaded is a BundleError naming the bundle."""
    from workflow_scripts.deployment.bundle import BundleError, inference_semantics

    info = bundle.info
    mirroring = info["inference"]["mirroring"] if mirroring is None else bool(mirroring)
    step_size = info["inference"]["step_size"] if step_size is None else float(step_size)
    if not 0 < step_size <= 1:
        raise InputError(bundle.archive, f"step size {step_size} must lie in (0, 1]")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's chatter
            if inference_semantics(info) == "v1":
                from workflow_scripts.deployment.v1_inference import load_v1_ensemble

                predictor = load_v1_ensemble(bundle.root, bundle.checkpoints, info["trainer"], device, mirroring,
                                             step_size, info.get("postprocessing"))
            else:
                from workflow_scripts.nnunet.predict import load_ensemble

                predictor = load_ensemble(bundle.root, bundle.checkpoints, info["trainer"], info["configuration"],
                                          device, mirroring, step_size)
    except InputError:
        raise
    except Exception as exc:  # e.g. a checkpoint holding pickled code (weights_only refuses it)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise BundleError(bundle.archive, f"the model cannot be loaded ({type(exc).__name__}: {first})") from None
    return predictor, mirroring, step_size


def read_cases(path) -> pd.DataFrame:
    """case_id and image of every row; refused with the file named when a column, id or image is wrong."""
    path = Path(path)
    try:
        cases = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot be read as a TSV table ({exc})") from None
    missing = [c for c in ("case_id", "image") if c not in cases.columns]
    if missing:
        raise InputError(path, f"lacks column(s) {', '.join(missing)} (has {', '.join(cases.columns)})")
    bad = [c for c in cases.case_id if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", c)]
    if bad:
        raise InputError(path, f"case_id {bad[0]!r}: ids are letters, digits, '.', '_' and '-'")
    dup = cases.case_id[cases.case_id.duplicated()].tolist()
    if dup:
        raise InputError(path, f"case_id {dup[0]!r} appears more than once")
    for image in cases.image:
        if not Path(image).is_file():
            raise InputError(path, f"image {image} does not exist")
    return cases[["case_id", "image"]]


def predict_table(bundle_path, cases_tsv, out_dir, device: str = "auto", threads: int | None = None, mirroring=None,
                  step_size=None) -> pd.DataFrame:
    """Write out_dir/<case_id>.nii.gz for every case; return per-case seconds."""
    from workflow_scripts.nnunet.env import configure

    threads = threads or len(os.sched_getaffinity(0))
    configure(threads=threads)  # before nnunetv2 is imported
    from workflow_scripts.deployment.bundle import inference_semantics, opened
    from workflow_scripts.nnunet.predict import predict_cases
    from workflow_scripts.nnunet.devices import pick_device

    cases = read_cases(cases_tsv)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=out_dir))
    try:
        with opened(bundle_path, workdir=work) as bundle:
            dev = pick_device(device)
            t0 = time.time()
            predictor, mirroring, step_size = load_predictor(bundle, dev, mirroring, step_size)
            log.info("%s: %s %s, %s semantics, %d fold(s), on %s (%d threads, mirroring %s, step %.2f), ready in %.1f s",
                     bundle.archive, bundle.info.get("modality"), bundle.info.get("model"),
                     inference_semantics(bundle.info), len(bundle.checkpoints), dev, threads,
                     "on" if mirroring else "off", step_size, time.time() - t0)
            rows = []
            for row in cases.itertuples():
                pred_dir = work / "pred"
                with contextlib.redirect_stdout(io.StringIO()):
                    timing = predict_cases(predictor, pd.DataFrame([{"case_id": row.case_id, "image": row.image}]),
                                           pred_dir)
                os.replace(pred_dir / f"{row.case_id}.nii.gz", out_dir / f"{row.case_id}.nii.gz")
                rows.append(timing.iloc[0].to_dict())
                log.info("%s: %.1f s", row.case_id, rows[-1]["seconds"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return pd.DataFrame(rows)
