"""Benchmark (by hand): an imported paper-size PanSegNet on one T1-sized MRI scan, on the CPU.

    python benchmarks/bench_v1_import.py --work /tmp/bench_v1 [--threads 2] [--mirroring] [--compare-v2] [--tile]

1. Writes a v1 trained-model folder of PanSegNet at the paper's size (Generic_UNet 32..320 features,
   6 stages, transformer d_model 512, 8 heads, 8 layers) with random weights (the weights do not
   change the cost) and a v1 3d_fullres plan for T1 MRI (below; the released plan is not published,
   this one is nnU-Net v1's shape for such data), and imports it (``bundle import-v1``).
2. Writes one SYNTHETIC T1-sized scan (320 x 260 x 72 voxels, 1.2 x 1.2 x 3.0 mm; the body nonzero).
3. (a) ``segment`` with the imported bundle (v1 semantics), mirroring off, and on with --mirroring.
4. (b) with --compare-v2: the same network and weights as a native bundle (v2 order) through
   ``segment``, and through nnU-Net v2's own ``nnUNetPredictor`` (same settings: step 0.5, Gaussian,
   no mirroring, CPU, same threads), each in a fresh process: seconds, peak RSS, identical masks.
   These two run first and back to back, so they meet the same machine.
5. With --tile: seconds of one forward pass over one tile (the patch), plain and with the 8 mirrored
   passes, and the tile count of the scan: with mirroring a scan costs about
   (scan seconds without mirroring) + 7 x tiles x (one pass), when a full mirrored run is too long.

Needs nnU-Net v1 (``nnunet==1.7.1``, which ``make install`` puts in .venv) to write the v1 folder
(tests/v1_models.py). Each run is a fresh process; its peak memory is the kernel's (ru_maxrss of the child). The machine's
load (``uptime``) is printed before and after: other jobs on a shared machine slow every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    """Wall seconds and the child's own peak RSS in MB (the command runs under a wrapper that reports it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    peak_file = log.with_suffix(".peak")
    wrapper = ("import resource, runpy, sys; sys.argv = sys.argv[2:]; "
               "mod = sys.argv[0] == '-m'; sys.argv = sys.argv[1:] if mod else sys.argv\n"
               "try:\n    (runpy.run_module(sys.argv[0], run_name='__main__') if mod else "
               "runpy.run_path(sys.argv[0], run_name='__main__'))\n"
               "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
               f"open({str(peak_file)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
               "sys.exit(code)")
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", wrapper, "x", *cmd[1:]], env=env, stdout=f,
                              stderr=subprocess.STDOUT)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}), see {log}")
    return seconds, int(peak_file.read_text()) / 1024


V2_PREDICTOR = r'''
import json, sys, torch
from pathlib import Path
from workflow_scripts.nnunet.env import configure
configure(threads=int(sys.argv[4]))
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from workflow_scripts.nnunet.predict import load_checkpoint
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


def tile_seconds(bundle: Path, work: Path, threads: int) -> dict:
    """One forward pass over one patch-sized tile, plain and mirrored (8 passes), and the scan's tile count."""
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    from workflow_scripts.deployment import bundle as B
    from workflow_scripts.deployment.bundle_predict import load_predictor
    from workflow_scripts.deployment.v1_inference import _tile_probabilities

    torch.set_num_threads(threads)
    with B.opened(bundle, work) as b:
        predictor, _, _ = load_predictor(b, torch.device("cpu"), False, 0.5)
        predictor.network.load_state_dict(predictor.parameters[0])
        x = torch.zeros(1, 1, *PLAN["patch"])
        out = {}
        with torch.no_grad():
            for name, mirroring in (("one_pass_s", False), ("mirrored_8_passes_s", True)):
                t0 = time.time()
                _tile_probabilities(predictor.network, x, mirroring)
                out[name] = round(time.time() - t0, 1)
    shape = [s for s in SCAN_SHAPE_ZYX]  # at the plan's spacing already; cropping keeps it here
    out["tiles"] = int(np.prod([len(s) for s in compute_steps_for_sliding_window(shape, PLAN["patch"], 0.5)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mirroring", action="store_true", help="also time segment with test-time mirroring (8x)")
    ap.add_argument("--compare-v2", action="store_true", help="(b): segment vs nnUNetPredictor in v2 order")
    ap.add_argument("--tile", action="store_true", help="time one tile, plain and with 8 mirrored passes")
    ap.add_argument("--segment-first", action="store_true", help="(b): run segment before nnUNetPredictor (an "
                                                                   "AB/BA pair of runs evens out a changing load)")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    print("load before:", load(), flush=True)
    folder = make_model(work) if not (work / "v1").exists() else next((work / "v1").iterdir())
    bundle = work / "panseg_T1_released.tar"
    if not bundle.exists():
        t, mb = run([sys.executable, "-m", "workflow_scripts.deployment.bundle", "import-v1", "--model-dir", str(folder),
                     "--modality", "T1", "--model", "pansegnet_released", "--no-mirroring", "--out", str(bundle)],
                    work / "import.log")
        print(f"import-v1: {t:.1f} s, peak {mb:.0f} MB, bundle {bundle.stat().st_size / 1e6:.0f} MB", flush=True)
    scan = make_scan(work / "scans")
    results = {}
    if args.compare_v2:
        from workflow_scripts.deployment import bundle as B

        extracted = work / "extracted"
        if not extracted.exists():
            B.extract(bundle, extracted)
        root = next(extracted.iterdir())
        native = work / "panseg_T1_v2order.tar"
        if not native.exists():
            B.export_bundle(root, [root / "fold_0" / "checkpoint_final.pth"],
                            "workflow_scripts.trainers.pansegnet:PanSegNetTrainer", "3d_fullres", "T1",
                            "pansegnet_released", native)
        script = work / "v2_predictor.py"
        script.write_text(V2_PREDICTOR)
        out = work / "seg_v2order"

        def predictor_run():
            t, mb = run([sys.executable, str(script), str(root), str(scan), str(work / "nnunetpredictor_mask"),
                         str(args.threads)], work / "nnunetpredictor.log")
            results["nnUNetPredictor"] = dict(wall_s=round(t, 1), peak_mb=round(mb))
            print("nnUNetPredictor", results["nnUNetPredictor"], "load:", load(), flush=True)

        def segment_run():
            shutil.rmtree(out, ignore_errors=True)
            t, mb = run([sys.executable, "-m", "workflow_scripts.deployment.segment", "--bundle", str(native), "--input",
                         str(scan.parent), "--out", str(out), "--device", "cpu", "--threads", str(args.threads),
                         "--no-mirroring"], work / "seg_v2order.log")
            results["segment_v2order"] = dict(wall_s=round(t, 1), peak_mb=round(mb), scan_s=float(
                __import__("pandas").read_csv(out / "summary.csv").seconds[0]))
            print("segment_v2order", results["segment_v2order"], "load:", load(), flush=True)

        print("load:", load(), flush=True)
        for step in ([segment_run, predictor_run] if args.segment_first else [predictor_run, segment_run]):
            step()
        import SimpleITK as sitk

        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "masks" / "t1_scan.nii.gz")))
        c = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "nnunetpredictor_mask.nii.gz")))
        results["masks_identical"] = bool(np.array_equal(a, c))
        results["voxels_differing"] = int(np.count_nonzero(a != c))
        results["ratio_nnUNetPredictor_over_segment"] = round(results["nnUNetPredictor"]["wall_s"] /
                                                              results["segment_v2order"]["wall_s"], 2)
    for mirroring in [False, True] if args.mirroring else [False]:
        out = work / f"seg_v1_{'mirror' if mirroring else 'plain'}"
        t, mb = run([sys.executable, "-m", "workflow_scripts.deployment.segment", "--bundle", str(bundle), "--input",
                     str(scan.parent), "--out", str(out), "--device", "cpu", "--threads", str(args.threads),
                     "--mirroring" if mirroring else "--no-mirroring"], work / f"{out.name}.log")
        row = json.loads((out / "segment_info.json").read_text())
        results[out.name] = dict(wall_s=round(t, 1), scan_s=float(
            __import__("pandas").read_csv(out / "summary.csv").seconds[0]), peak_mb=round(mb),
            semantics=row["inference_semantics"])
        print(out.name, results[out.name], "load:", load(), flush=True)
    if args.tile:
        results["tile"] = tile_seconds(bundle, work, args.threads)
        print("tile", results["tile"], "load:", load(), flush=True)
    print(json.dumps(results, indent=1), flush=True)
    print("load after:", load(), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
