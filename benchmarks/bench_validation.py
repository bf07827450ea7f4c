"""Benchmark: validating one CT-sized image/label pair as prepare does (run by hand).

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_validation.py [--repeats 3] [--shape 100 512 512]

Writes a 512x512x100 (z, y, x) CT-like int16 image (body ellipse at 40 HU in -1000 HU air, noise
sd 20 HU) and a uint8 label with a pancreas-sized blob, both as .nii.gz as SimpleITK writes them,
then times ``workflow_scripts.data.image_checks.check_pair``: both files inflated completely with every gzip
CRC checked, header/size verified, image finite, label values 0/1 with foreground, same grid. The
goal is at most 2 s per pair on one core. Also prints SimpleITK's plain read of both
files for scale (it does not verify anything, and zero-fills a truncated file).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts.data.image_checks import check_pair  # noqa: E402


def ct_pair(folder: Path, shape, seed=0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    z, y, x = shape
    yy, xx = np.mgrid[:y, :x]
    body = ((yy - y / 2) ** 2 / (0.4 * y) ** 2 + (xx - x / 2) ** 2 / (0.47 * x) ** 2) < 1
    image = np.where(body, 40, -1000).astype(np.int16)[None].repeat(z, 0)
    image = (image + rng.normal(0, 20, image.shape)).astype(np.int16)
    zz, yy, xx = np.ogrid[:z, :y, :x]
    label = (((zz - z / 2) / (0.15 * z)) ** 2 + ((yy - y / 2) / 30) ** 2 + ((xx - x / 2) / 60) ** 2 < 1).astype(np.uint8)
    paths = []
    for name, arr in (("ct_0000.nii.gz", image), ("ct.nii.gz", label)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.8, 0.8, 2.5))
        sitk.WriteImage(img, str(folder / name), useCompression=True)
        paths.append(folder / name)
    return paths[0], paths[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[100, 512, 512], help="z y x")
    args = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        image, label = ct_pair(Path(tmp), tuple(args.shape))
        sizes = f"{image.stat().st_size / 1e6:.1f} + {label.stat().st_size / 1e6:.1f} MB compressed"
        check_pair(image, label)  # warm-up (imports)
        checks, reads = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = check_pair(image, label)
            checks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sitk.ReadImage(str(image)), sitk.ReadImage(str(label))
            reads.append(time.perf_counter() - t0)
    print(f"pair {tuple(args.shape)} (z, y, x), {sizes}; label {result.label_voxels} voxels")
    print(f"check_pair (full decode + verification): median {statistics.median(checks):.2f} s, "
          f"max {max(checks):.2f} s over {args.repeats} runs (goal <= 2 s on one core)")
    print(f"SimpleITK plain read of both files, for scale: median {statistics.median(reads):.2f} s")
    return 0 if max(checks) <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
