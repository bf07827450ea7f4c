"""Benchmark (by hand): an imported paper-size PanSegNet on one T1-sized MRI scan, on the CPU.

    python benchmarks/bench_v1_import.py --work /tmp/bench_v1 [--threads 2] [--mirroring] [--compare-v2]

1. Writes a v1 trained-model folder of PanSegNet at the paper's size (Generic_UNet 32..320 features,
   6 stages, transformer d_model 512, 8 heads, 8 layers) with random weights (the weights do not
   change the cost) and a v1 3d_fullres plan for T1 MRI (below; the released plan is not published,
   this one is nnU-Net v1's shape for such data), and imports it (``bundle import-v1``).
2. Writes one SYNTHETIC T1-sized scan (320 x 260 x 72 voxels, 1.2 x 1.2 x 3.0 mm; the body nonzero).
3. (a) ``segment`` with the imported bundle (v1 semantics), mirroring off, and on with --mirroring.
4. (b) with --compare-v2: the same network and weights as a native bundle (v2 order) through
   ``segment``, and through nnU-Net v2's own ``nnUNetPredictor`` (same settings: step 0.5, Gaussian,
   no mirroring, CPU, same threads), each in a fresh process: seconds, peak RSS, identical masks.

Each run is a fresh process; its peak memory is the kernel's (ru_maxrss of the child). The machine's
load (``uptime``) is printed before and after: other jobs on a shared machine slow every number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PLAN = dict(patch=[48, 192, 192], spacing=[3.0, 1.2, 1.2],
            pool=[[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
            conv=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]])
SCAN_SHAPE_ZYX = (72, 260, 320)


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0:3].__str__()


def make_model(work: Path) -> Path:
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    import v1_models as V

    plans = V.v1_plans(PLAN["patch"], PLAN["spacing"], PLAN["pool"], PLAN["conv"], base=32, use_mask=True)
    net = V.naive_pansegnet(plans, d_model=512, ff=512, n=8)  # the released block's sizes
    torch.manual_seed(0)
    return V.save_v1_folder(work / "v1", "nnTransUNetTrainerV2", net, plans)


def make_scan(folder: Path) -> Path:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in SCAN_SHAPE_ZYX], indexing="ij")
    body = (y / 0.8) ** 2 + (x / 0.95) ** 2 <= 1
    image = np.where(body, 200 + 40 * rng.standard_normal(SCAN_SHAPE_ZYX), 0).astype(np.float32)
    img = sitk.GetImageFromArray(image)
    img.SetSpacing((1.2, 1.2, 3.0))
    path = folder / "t1_scan_0000.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def run(cmd: list[str], log: Path) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS in MB."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed, see {log}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, (peak if peak > before else float("nan")) / 1024


V2_PREDICTOR = r'''
import json, sys, torch
from pathlib import Path
from workflow_scripts.nnunet_env import configure
configure(threads=int(sys.argv[4]))
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from workflow_scripts.predict import load_checkpoint
from workflow_scripts.trainers.pansegnet import PanSegNetTrainer
root, scan, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
plans = json.loads((root / "plans.json").read_text()); dataset = json.loads((root / "dataset.json").read_text())
pm = PlansManager(plans); conf = pm.get_configuration("3d_fullres")
net = PanSegNetTrainer.build_network_architecture(pm, conf, 1, 2, enable_deep_supervision=False)
p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                    device=torch.device("cpu"), verbose=False, allow_tqdm=False)
p.manual_initialization(net, pm, conf, [load_checkpoint(root / "fold_0" / "checkpoint_final.pth")["network_weights"]],
                        dataset, "PanSegNetTrainer", None)
if __name__ == "__main__":
    p.predict_from_files_sequential([[scan]], [out], save_probabilities=False, overwrite=True)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mirroring", action="store_true", help="also time segment with test-time mirroring (8x)")
    ap.add_argument("--compare-v2", action="store_true", help="(b): segment vs nnUNetPredictor in v2 order")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    print("load before:", load(), flush=True)
    folder = make_model(work) if not (work / "v1").exists() else next((work / "v1").iterdir())
    bundle = work / "panseg_T1_released.tar"
    if not bundle.exists():
        t, mb = run([sys.executable, "-m", "workflow_scripts.bundle", "import-v1", "--model-dir", str(folder),
                     "--modality", "T1", "--model", "pansegnet_released", "--no-mirroring", "--out", str(bundle)],
                    work / "import.log")
        print(f"import-v1: {t:.1f} s, peak {mb:.0f} MB, bundle {bundle.stat().st_size / 1e6:.0f} MB", flush=True)
    scan = make_scan(work / "scans")
    results = {}
    for mirroring in [False, True] if args.mirroring else [False]:
        out = work / f"seg_v1_{'mirror' if mirroring else 'plain'}"
        t, mb = run([sys.executable, "-m", "workflow_scripts.segment", "--bundle", str(bundle), "--input",
                     str(scan.parent), "--out", str(out), "--device", "cpu", "--threads", str(args.threads),
                     "--mirroring" if mirroring else "--no-mirroring"], work / f"{out.name}.log")
        row = json.loads((out / "segment_info.json").read_text())
        results[out.name] = dict(wall_s=round(t, 1), scan_s=float(
            __import__("pandas").read_csv(out / "summary.csv").seconds[0]), peak_mb=round(mb))
        print(out.name, results[out.name], "semantics", row["inference_semantics"], flush=True)
    if args.compare_v2:
        from workflow_scripts import bundle as B

        native = work / "panseg_T1_v2order.tar"
        if not native.exists():
            b = B.extract(bundle, work / "extracted") if not (work / "extracted").exists() else None
            root = b.root if b else next((work / "extracted").iterdir())
            B.export_bundle(root, [root / "fold_0" / "checkpoint_final.pth"],
                            "workflow_scripts.trainers.pansegnet:PanSegNetTrainer", "3d_fullres", "T1",
                            "pansegnet_released", native)
        root = next((work / "extracted").iterdir())
        out = work / "seg_v2order"
        t, mb = run([sys.executable, "-m", "workflow_scripts.segment", "--bundle", str(native), "--input",
                     str(scan.parent), "--out", str(out), "--device", "cpu", "--threads", str(args.threads),
                     "--no-mirroring"], work / "seg_v2order.log")
        results["segment_v2order"] = dict(wall_s=round(t, 1), peak_mb=round(mb), scan_s=float(
            __import__("pandas").read_csv(out / "summary.csv").seconds[0]))
        script = work / "v2_predictor.py"
        script.write_text(V2_PREDICTOR)
        t, mb = run([sys.executable, str(script), str(root), str(scan), str(work / "nnunetpredictor_mask"),
                     str(args.threads)], work / "nnunetpredictor.log")
        results["nnUNetPredictor"] = dict(wall_s=round(t, 1), peak_mb=round(mb))
        import SimpleITK as sitk

        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "masks" / "t1_scan.nii.gz")))
        c = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "nnunetpredictor_mask.nii.gz")))
        results["masks_identical"] = bool(np.array_equal(a, c))
        results["voxels_differing"] = int(np.count_nonzero(a != c))
        results["ratio_nnUNetPredictor_over_segment"] = round(results["nnUNetPredictor"]["wall_s"] /
                                                              results["segment_v2order"]["wall_s"], 2)
        print(json.dumps(results, indent=1), flush=True)
    print("load after:", load(), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
