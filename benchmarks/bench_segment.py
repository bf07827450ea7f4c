"""Seconds per scan and peak memory (RSS) of the segment command, demo-sized vs CT-sized scans.

Run by hand, with a bundle (e.g. after `make demo`, or any workflow run that exported one):
    python benchmarks/bench_segment.py --bundle results/demo/T1/nnunet/bundle/panseg_T1_nnunet.tar \
        [--threads 2] [--scans 2] [--ct-scans 1] [--sizes demo ct]

Writes SYNTHETIC scans once into --work: "demo" = a demo T1 scan (about 65 x 51 x 22 voxels at
2.3 x 2.3 x 3.8 mm), "ct" = a whole-abdomen CT of 512 x 512 x --ct-slices voxels at
0.78 x 0.78 x 2.5 mm (rendered at 2 mm and resampled). Then runs `python -m workflow_scripts.segment`
once per size in a fresh process, on the CPU: the process's peak RSS comes from the kernel
(wait4), the seconds per scan from its summary.csv (reading, preprocessing, fold ensemble,
writing the mask and the overlay), the start-up (imports, bundle check, model) is the rest.
The network is the bundle's: say which plan it has when quoting the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def demo_scan(seed: int):
    import numpy as np

    from workflow_scripts.data.synthetic import CENTER_STYLES, Anatomy, render

    image, _ = render(Anatomy(seed), "T1", CENTER_STYLES["NYU"], np.random.default_rng(seed + 1))
    return image


def ct_scan(seed: int, slices: int = 100):
    """A 512 x 512 x `slices` CT (0.78 x 0.78 x 2.5 mm): the synthetic abdomen in a CT's field of view."""
    import numpy as np
    import SimpleITK as sitk

    from workflow_scripts.data.synthetic import Anatomy, CenterStyle, render

    style = CenterStyle("CTB", (2.0, 2.0, 2.5), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), 1.0, 0.0, 0.04, 0.0)
    coarse, _ = render(Anatomy(seed), "CT", style, np.random.default_rng(seed + 1), fov_mm=(400.0, 400.0, 250.0))
    spacing = (400.0 / 512, 400.0 / 512, 2.5)
    size = (512, 512, slices)
    centre = np.array(coarse.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in coarse.GetSize()]))
    origin = centre - np.array(spacing) * (np.array(size) - 1) / 2
    fine = sitk.Resample(coarse, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing,
                         coarse.GetDirection(), -1000.0, sitk.sitkInt16)
    return fine


def write_scans(work: Path, size: str, n: int, ct_slices: int) -> Path:
    import SimpleITK as sitk

    folder = work / (f"scans_{size}_{n}" if size != "ct" else f"scans_ct{ct_slices}_{n}")
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        path = folder / f"{size}_{k + 1:02d}.nii.gz"
        if not path.exists():
            t0 = time.time()
            image = demo_scan(100 + k) if size == "demo" else ct_scan(200 + k, ct_slices)
            sitk.WriteImage(image, str(path), useCompression=True)
            print(f"wrote {path} {image.GetSize()} in {time.time() - t0:.0f} s", flush=True)
    return folder


def run_segment(bundle: Path, folder: Path, out: Path, threads: int) -> dict:
    cmd = [sys.executable, "-m", "workflow_scripts.deployment.segment", "--bundle", str(bundle), "--input", str(folder),
           "--out", str(out), "--threads", str(threads), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".log"), "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"segment failed, see {out.with_suffix('.log')}")
    import pandas as pd

    summary = pd.read_csv(out / "summary.csv")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": summary.seconds.tolist(),
            "size": summary["size"].iloc[0], "spacing": summary.spacing_mm.iloc[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scans", type=int, default=2, help="demo-sized scans")
    ap.add_argument("--ct-scans", type=int, default=1, help="CT-sized scans")
    ap.add_argument("--sizes", nargs="+", default=["demo", "ct"], choices=["demo", "ct"])
    ap.add_argument("--ct-slices", type=int, default=100)
    ap.add_argument("--work", default="/tmp/panseg-bench-segment")
    args = ap.parse_args()
    work = Path(args.work)
    bundle = Path(args.bundle).resolve()
    import tarfile

    with tarfile.open(bundle) as tf:
        info = json.load(tf.extractfile(next(m for m in tf.getmembers() if m.name.endswith("/bundle.json"))))
    print(f"bundle {bundle.name}: {info['model']} {info['configuration']}, {len(info['folds'])} folds, plan "
          f"{info['plan']}, network {info['network'] or '-'}; {args.threads} threads, CPU")
    rows = []
    for size in args.sizes:
        folder = write_scans(work, size, args.scans if size == "demo" else args.ct_scans, args.ct_slices)
        out = work / f"out_{size}_{info['model']}"
        r = run_segment(bundle, folder, out, args.threads)
        startup = r["wall_s"] - sum(r["seconds"])
        rows.append((size, r["size"], r["spacing"], r["seconds"], startup, r["peak_rss_mb"]))
    print("\n| scan | voxels (x y z) | spacing mm | seconds per scan | start-up s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for size, vox, sp, secs, startup, rss in rows:
        print(f"| {size} | {vox} | {sp} | {' / '.join(f'{s:.1f}' for s in secs)} | {startup:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
