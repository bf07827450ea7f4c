"""Segment new scans with a model bundle: NIfTI files or DICOM series in; masks, volumes, overlays out.

    python -m workflow_scripts.segment --bundle panseg_T1_pansegnet.tar --input scans/ --out seg/ \
        [--device auto|cpu|cuda] [--threads N]

Input: every ``*.nii`` / ``*.nii.gz`` file under the folder (one scan each; an nnU-Net channel suffix
``_0000`` is dropped from the name) and every DICOM series in any folder under it (one scan per
SeriesInstanceUID; read with SimpleITK's ImageSeriesReader, see ``dicom.py``).

Output, per scan: ``masks/<scan>.nii.gz`` (0/1, in the scan's own geometry: a DICOM series in the
geometry SimpleITK reads it with), ``overlays/<scan>.png`` (three orthogonal slices through the
mask's centre); for the folder: ``summary.csv`` (one row per scan: status ok/error, the error,
pancreas volume in mL, seconds, ...; rewritten after every scan) and ``segment_info.json`` (bundle,
settings, versions, peak memory).

The bundle is verified (sha256 of every file) and extracted into a temporary folder inside the
output folder; the model is built exactly as the workflow's own external-center prediction builds
it (``predict.load_ensemble``: fold ensemble, ``torch.load(weights_only=True)``), and every scan
goes through ``predict.predict_cases``, so masks equal the workflow's. Models imported from nnU-Net
v1 (bundle.json ``inference_semantics: v1``) run with v1's order of operations instead
(``v1_inference.py``), so they give v1's masks (``bundle_predict.load_predictor`` chooses). A scan that fails is
reported in the summary and the others go on. Exit status: 0 all scans segmented, 1 some failed
(0 with ``--allow-failures``), 2 nothing could be done (bundle refused, no scans, no GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from workflow_scripts.common.atomic import atomic_path, write_table, write_text
from workflow_scripts.data.decode import count_nonfinite, read_nifti
from workflow_scripts.deployment.dicom import Series, find_series, read_series
from workflow_scripts.common.errors import InputError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
COLUMNS = ["scan", "source", "kind", "series_uid", "status", "error", "volume_ml", "voxels", "size", "spacing_mm",
           "seconds", "mask", "overlay", "peak_rss_mb"]


@dataclass
class Scan:
    name: str
    source: Path  # a NIfTI file or a DICOM folder
    kind: str  # nifti | dicom
    series: Series | None = None
    unreadable: tuple = ()  # DICOM files beside the series that no series could read
    problem: str = ""  # found but unusable before any work (e.g. DICOM files in no readable series)


# ---- finding scans ---------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "scan"


def _nifti_stem(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-5] if re.search(r".+_0000$", name) else name


def find_scans(input_dir, exclude=()) -> tuple[list[Scan], list[Path]]:
    """NIfTI files and DICOM series anywhere under `input_dir` (sorted, unique names), and the
    files that are neither (ignored). Hidden files and folders and `exclude` are skipped."""
    root = Path(input_dir)
    if not root.is_dir():
        raise InputError(root, "input folder does not exist")
    excluded = {Path(e).resolve() for e in exclude}
    scans, ignored = [], []
    for folder, dirs, files in os.walk(root):
        folder = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (folder / d).resolve() not in excluded)
        rel = folder.relative_to(root)
        prefix = "" if rel == Path(".") else "_".join(rel.parts) + "_"
        others = []
        for f in sorted(f for f in files if not f.startswith(".")):
            if f.endswith(NIFTI_SUFFIXES):
                scans.append(Scan(_safe(prefix + _nifti_stem(f)), folder / f, "nifti"))
            else:
                others.append(folder / f)
        if not others:
            continue
        series, stray = find_series(folder)
        base = "_".join(rel.parts) if rel != Path(".") else root.resolve().name
        numbers = [s.number for s in series]
        by_number = all(numbers) and len(set(numbers)) == len(numbers)
        for k, s in enumerate(series, 1):
            name = base if len(series) == 1 else f"{base}_S{s.number}" if by_number else f"{base}_{k}"
            scans.append(Scan(_safe(name), folder, "dicom", series=s, unreadable=tuple(stray)))
        if stray:
            scans.append(Scan(_safe(base + "_unreadable_dicom"), folder, "dicom",
                              problem=f"{len(stray)} DICOM file(s) belong to no readable series "
                                      f"(first: {stray[0].name})"))
        in_series = {Path(f).name for s in series for f in s.files} | {p.name for p in stray}
        ignored += [p for p in others if p.name not in in_series]
    seen: dict[str, int] = {}
    for scan in scans:  # unique names, deterministic (walk order)
        n = seen.get(scan.name, 0)
        seen[scan.name] = n + 1
        if n:
            scan.name = f"{scan.name}_{n + 1}"
    return scans, ignored


# ---- one scan --------------------------------------------------------------------------------
def check_nifti(path: Path) -> None:
    """The whole file decoded and verified before nnU-Net reads it (``decode.read_nifti``: a
    truncated or corrupt file is an error, never zero-filled), then what a scan must be."""
    volume = read_nifti(path)
    if min(volume.size) < 2:
        raise InputError(path, f"has shape {volume.size}; a 3-D scan needs at least 2 voxels along every axis")
    bad = count_nonfinite(volume.array)
    if bad:
        raise InputError(path, f"{bad} voxels are NaN or infinite")


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def segment_scan(predictor, scan: Scan, out_dir: Path, work: Path, keep_converted: bool = False) -> dict:
    """Mask, volume and overlay of one scan; raises on any failure (the caller reports it)."""
    from workflow_scripts.reporting.overlay import write_overlay
    from workflow_scripts.nnunet.predict import predict_cases

    if scan.problem:
        raise InputError(scan.source, scan.problem)
    if scan.kind == "dicom":
        image_path = work / f"{scan.name}_0000.nii"  # uncompressed: quick to write and to read back
        series_image = read_series(scan.series, scan.unreadable)
        sitk.WriteImage(series_image, str(image_path))
        if keep_converted:
            with atomic_path(out_dir / "images" / f"{scan.name}.nii.gz") as tmp:
                sitk.WriteImage(series_image, str(tmp), useCompression=True)
        del series_image  # the scan is read again after prediction: keep memory for nnU-Net
    else:
        image_path = scan.source
        check_nifti(image_path)
    pred_dir = work / "pred"
    quiet = io.StringIO()  # nnU-Net prints progress chatter to stdout
    with contextlib.redirect_stdout(quiet):
        predict_cases(predictor, pd.DataFrame({"case_id": [scan.name], "image": [str(image_path)]}), pred_dir)
    log.debug("nnU-Net: %s", quiet.getvalue().strip())
    mask_tmp = pred_dir / f"{scan.name}.nii.gz"
    mask = sitk.ReadImage(str(mask_tmp))
    image = sitk.ReadImage(str(image_path))
    if mask.GetSize() != image.GetSize():
        raise RuntimeError(f"mask size {mask.GetSize()} differs from the scan's {image.GetSize()}")
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    volume_ml = voxels * float(np.prod(mask.GetSpacing())) / 1000.0
    overlay = out_dir / "overlays" / f"{scan.name}.png"
    write_overlay(image, mask, overlay, title=f"{scan.name}: pancreas {volume_ml:.1f} mL")
    final = out_dir / "masks" / f"{scan.name}.nii.gz"
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(mask_tmp, final)  # same file system (work lies inside out_dir): atomic
    if scan.kind == "dicom":
        image_path.unlink()
    return dict(volume_ml=round(volume_ml, 3), voxels=voxels, size="x".join(map(str, image.GetSize())),
                spacing_mm="x".join(f"{s:.4g}" for s in image.GetSpacing()),
                mask=str(final.relative_to(out_dir)), overlay=str(overlay.relative_to(out_dir)))


def _error_text(scan: Scan, exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return str(exc)
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{scan.source}: {type(exc).__name__}: {lines[-1] if lines else 'no message'}"


# ---- the folder ------------------------------------------------------------------------------
def segment_folder(predictor, scans: list[Scan], out_dir: Path, work: Path, keep_converted: bool = False) -> pd.DataFrame:
    rows = []
    for i, scan in enumerate(scans, 1):
        log.info("[%d/%d] %s (%s %s): segmenting", i, len(scans), scan.name, scan.kind, scan.source)
        t0 = time.time()
        row = dict(scan=scan.name, source=str(scan.source), kind=scan.kind,
                   series_uid=scan.series.uid if scan.series else "", status="ok", error="")
        try:
            row.update(segment_scan(predictor, scan, out_dir, work, keep_converted))
        except Exception as exc:  # one bad scan must not stop the folder
            row.update(status="error", error=_error_text(scan, exc))
            log.debug("%s failed", scan.name, exc_info=True)
        row.update(seconds=round(time.time() - t0, 2), peak_rss_mb=peak_rss_mb())
        rows.append(row)
        if row["status"] == "ok":
            log.info("[%d/%d] %s: ok, pancreas %.1f mL, %.1f s", i, len(scans), scan.name, row["volume_ml"],
                     row["seconds"])
        else:
            log.error("[%d/%d] %s: FAILED: %s", i, len(scans), scan.name, row["error"])
        write_table(summary_table(rows), out_dir / "summary.csv")
    return summary_table(rows)


def summary_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table["voxels"] = table["voxels"].astype("Int64")  # integers, blank for failed scans
    return table


def run(bundle_path, input_dir, out_dir, device: str = "auto", threads: int | None = None, mirroring=None,
        step_size=None, keep_converted: bool = False) -> tuple[pd.DataFrame, dict]:
    """Segment every scan under input_dir into out_dir; return the summary table and run info."""
    from workflow_scripts.nnunet.env import configure

    threads = threads or len(os.sched_getaffinity(0))
    configure(threads=threads)  # before nnunetv2 is imported: it reads its process counts at import
    from workflow_scripts.deployment.bundle import BundleError, inference_semantics, opened, software_versions, version_differences
    from workflow_scripts.deployment.bundle_predict import load_predictor
    from workflow_scripts.nnunet.devices import pick_device

    t_start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=out_dir))
    try:
        with opened(bundle_path, workdir=work) as bundle:
            info = bundle.info
            log.info("bundle %s verified: %s %s (%s, %s), %d folds, sha256 %s", bundle.archive, info.get("modality"),
                     info.get("model"), info["trainer"].partition(":")[2], info["configuration"],
                     len(info["checkpoints"]), bundle.sha256[:16])
            channels = info.get("channels") or {"0": "image"}
            if len(channels) != 1:
                raise BundleError(bundle.archive, f"the model takes {len(channels)} input channels "
                                                  f"({', '.join(channels.values())}); segment reads one scan per case")
            here = software_versions()
            for diff in version_differences(info, here):
                log.warning("bundle made with other software: %s", diff)
            scans, ignored = find_scans(input_dir, exclude=[out_dir])
            if ignored:
                log.info("ignored %d file(s) that are neither NIfTI nor DICOM (first: %s)", len(ignored), ignored[0])
            if not scans:
                raise InputError(input_dir, "no NIfTI files (.nii, .nii.gz) or DICOM series found")
            log.info("%d scans in %s: %d NIfTI, %d DICOM series", len(scans), input_dir,
                     sum(s.kind == "nifti" for s in scans), sum(s.kind == "dicom" for s in scans))
            dev = pick_device(device)
            # native bundles: nnU-Net v2's predictor; imported v1 models: v1's semantics (v1_inference.py)
            predictor, mirroring, step_size = load_predictor(bundle, dev, mirroring, step_size)
            log.info("model ready on %s (%d threads, mirroring %s, step %.2f, nnU-Net %s semantics) in %.1f s", dev,
                     threads, "on" if mirroring else "off", step_size, inference_semantics(info), time.time() - t_start)
            summary = segment_folder(predictor, scans, out_dir, work, keep_converted)
            run_info = {
                "bundle": str(bundle.archive), "bundle_sha256": bundle.sha256, "bundle_name": info.get("name"),
                "modality": info.get("modality"), "model": info.get("model"), "trainer": info["trainer"],
                "configuration": info["configuration"], "folds": info.get("folds"),
                "inference_semantics": inference_semantics(info),
                "bundle_versions": info.get("versions"), "versions": here,
                "input": str(input_dir), "device": str(dev), "threads": threads, "mirroring": bool(mirroring),
                "step_size": step_size, "scans": len(summary), "ok": int((summary.status == "ok").sum()),
                "failed": int((summary.status != "ok").sum()), "seconds": round(time.time() - t_start, 1),
                "peak_rss_mb": peak_rss_mb(), "ignored_files": [str(p) for p in ignored],
            }
            write_text(out_dir / "segment_info.json", json.dumps(run_info, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary, run_info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Segment the pancreas in a folder of scans (NIfTI files or DICOM "
                                             "series) with a PanSeg model bundle.")
    ap.add_argument("--bundle", required=True, help="model bundle, panseg_<modality>_<model>.tar")
    ap.add_argument("--input", required=True, help="folder of scans: NIfTI files and/or DICOM series folders")
    ap.add_argument("--out", required=True, help="output folder (masks/, overlays/, summary.csv)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: a GPU when torch sees one, else the CPU")
    ap.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")
    ap.add_argument("--mirroring", action=argparse.BooleanOptionalAction, default=None,
                    help="test-time mirroring (default: as the bundle was evaluated); slower, 8 passes in 3-D")
    ap.add_argument("--step-size", type=float, help="sliding-window step as a fraction of the patch (default: bundle's)")
    ap.add_argument("--keep-converted", action="store_true", help="also write DICOM series as images/<scan>.nii.gz")
    ap.add_argument("--allow-failures", action="store_true", help="exit 0 even if some scans failed")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug log (tracebacks of failed scans)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("workflow_scripts.nnunet.predict").setLevel(logging.WARNING)  # segment logs its own progress
    try:
        summary, info = run(args.bundle, args.input, args.out, args.device, args.threads, args.mirroring,
                            args.step_size, args.keep_converted)
    except (InputError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    failed = summary[summary.status != "ok"]
    log.info("%d of %d scans segmented in %.0f s (peak memory %.0f MB): %s", info["ok"], info["scans"],
             info["seconds"], info["peak_rss_mb"], Path(args.out) / "summary.csv")
    if len(failed):
        log.error("%d scan(s) failed: %s", len(failed), ", ".join(failed.scan))
        return 0 if args.allow_failures else 1
    return 0


if __name__ == "__main__":  # nnU-Net may start worker processes with spawn: keep this guard
    sys.exit(main())
