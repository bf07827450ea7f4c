"""One training iteration of each trainable model on the committed PanSegData-sized plan and batch,
relative to nnU-Net, and each model's peak memory; by default on the CPU with 2 threads.

    python benchmarks/bench_models.py [--plan benchmarks/data/panseg_t1_plans.json] [--models nnunet ...]
        [--iterations 2] [--threads 2] [--batch-size N] [--patch Z Y X] [--device cpu|cuda] [--max-rss-gb 14]
        [--out rows.json]

Every model runs in a process of its own, so its peak memory is its own (the process's maximum
resident set on the CPU; torch's peak allocated memory on a GPU). Each gets the plan's batch (or
--batch-size) of its configuration (3d_fullres; 2d for unet2d and axunet): a seeded synthetic scan
(noise plus a bright ellipsoid, labelled 1), the same for every model of a configuration, with the
deep-supervision targets nnU-Net would make. Network options are the built-in ones (paper size).
The time is the median of --iterations calls of the trainer's own train_step (forward, Dice + CE
with deep supervision, backward, gradient clipping, SGD step) after one warm-up step, as wall time
and as the process's CPU time (the steadier number on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "benchmarks" / "data" / "panseg_t1_plans.json"
MODELS = {  # trainer, configuration (the built-in catalog's; network options: built-in defaults)
    "nnunet": ("workflow_scripts.trainers.nnunet:NnUNetTrainer", "3d_fullres"),
    "pansegnet": ("workflow_scripts.trainers.pansegnet:PanSegNetTrainer", "3d_fullres"),
    "transunet3d": ("workflow_scripts.trainers.transunet3d:TransUNet3DTrainer", "3d_fullres"),
    "lintransunet": ("workflow_scripts.trainers.lintransunet:LinTransUNetTrainer", "3d_fullres"),
    "unet2d": ("workflow_scripts.trainers.unet2d:UNet2DTrainer", "2d"),
    "axunet": ("workflow_scripts.trainers.axunet:AXUNetTrainer", "2d"),
}
DATASET = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "pancreas": 1}, "numTraining": 385,
           "file_ending": ".nii.gz"}


def synthetic_batch(batch: int, patch, seed: int = 0):
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (batch, 1, *patch)).astype(np.float32)
    grid = np.indices(patch).astype(np.float32)
    centre, radii = [s / 2 for s in patch], [max(s / 5, 1) for s in patch]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    y = np.broadcast_to(inside, (batch, 1, *patch)).astype(np.float32)
    x[y > 0] += 2.0
    return torch.from_numpy(x), torch.from_numpy(y.copy())


def worker(args) -> dict:
    os.environ.update(nnUNet_compile="false", nnUNet_n_proc_DA="0")
    tmp = Path(tempfile.mkdtemp(prefix="panseg-bench-models-"))
    from workflow_scripts.nnunet.env import configure

    configure(preprocessed=tmp / "pre", results=tmp / "res", threads=args.threads)
    import torch
    from torch.nn import functional as F

    from workflow_scripts.trainers import load_trainer_class

    trainer_path, configuration = MODELS[args.worker]
    plans = json.loads(Path(args.plan).read_text())
    plans["continue_training"] = False
    if args.patch and configuration == "3d_fullres":
        plans["configurations"][configuration]["patch_size"] = args.patch
    device = torch.device(args.device)
    trainer = load_trainer_class(trainer_path)(plans, configuration, 0, DATASET, device)
    trainer.configure_run(1, 1, 1, 1e-2, 1, optimizer="sgd")  # nnU-Net's SGD recipe
    cm = trainer.configuration_manager
    # the parts of nnU-Net's initialize() a train step uses (initialize itself wants preprocessed data on disk)
    t0 = time.perf_counter()
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, cm, 1, 2, True).to(device)
    build_s = time.perf_counter() - t0
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    trainer.was_initialized = True
    batch = args.batch_size or cm.batch_size
    x, y = synthetic_batch(batch, cm.patch_size)
    targets = [F.interpolate(y, size=[round(p * s) for p, s in zip(cm.patch_size, scale)], mode="nearest")
               for scale in trainer._get_deep_supervision_scales()]
    step = {"data": x, "target": targets}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.network.train()
    times, cpu = [], []
    for i in range(args.iterations + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = trainer.train_step(step)["loss"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"model": args.worker, "configuration": configuration, "patch": list(cm.patch_size), "batch": batch,
            "parameters_M": round(sum(p.numel() for p in trainer.network.parameters()) / 1e6, 2),
            "seconds_per_iteration": round(statistics.median(times), 3), "times": [round(t, 3) for t in times],
            "cpu_seconds_per_iteration": round(statistics.median(cpu), 3),
            "peak_memory_mb": round(peak), "memory": "torch peak allocated" if device.type == "cuda" else "max RSS",
            "build_seconds": round(build_s, 2), "loss": round(float(loss), 4), "device": str(device),
            "threads": args.threads}


def run_guarded(cmd, env, max_rss_gb: float):
    """Run a worker; kill it when its resident memory passes max_rss_gb (a shared machine must not
    run out of memory). Returns (stdout, stderr, GB at the kill or 0)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        over = 0.0
        while proc.poll() is None:
            try:
                rss_kb = int(next(line.split()[1] for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS")))
            except (OSError, StopIteration):
                rss_kb = 0
            if rss_kb / 2**20 > max_rss_gb:
                over = rss_kb / 2**20
                proc.kill()
            time.sleep(0.5)
        proc.wait()
        out.seek(0)
        err.seek(0)
        return out.read(), err.read(), over


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default=str(PLAN))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, help="default: the plan's")
    ap.add_argument("--patch", type=int, nargs=3, help="3-D patch instead of the plan's (e.g. where memory is short)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--max-rss-gb", type=float, default=14, help="stop a model whose process grows past this")
    ap.add_argument("--out", help="also write the rows as JSON here")
    ap.add_argument("--worker", choices=list(MODELS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return
    rows = []
    for model in args.models:
        cmd = [sys.executable, __file__, "--worker", model, "--plan", args.plan, "--iterations", str(args.iterations),
               "--threads", str(args.threads), "--device", args.device]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.patch:
            cmd += ["--patch", *map(str, args.patch)]
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads))
        stdout, stderr, over = run_guarded(cmd, env, args.max_rss_gb)
        if over:
            print(f"{model}: stopped at {over:.1f} GB resident, above --max-rss-gb {args.max_rss_gb}", flush=True)
            continue
        if not stdout.strip():
            print(f"{model}: failed\n{stderr[-3000:]}", flush=True)
            continue
        rows.append(json.loads(stdout.strip().splitlines()[-1]))
        r = rows[-1]
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1))
        print(f"{model:13s} {r['configuration']:10s} batch {r['batch']} x {r['patch']}: {r['seconds_per_iteration']:.2f} s/it "
              f"{r['times']}, CPU {r['cpu_seconds_per_iteration']:.2f} s/it, {r['parameters_M']} M parameters, "
              f"peak {r['peak_memory_mb']} MB ({r['memory']})", flush=True)
    ref = next((r for r in rows if r["model"] == "nnunet"), None)
    if ref:
        print("\nrelative to nnunet (wall time and CPU time per iteration, peak memory):")
        for r in rows:
            print(f"  {r['model']:13s} {r['seconds_per_iteration'] / ref['seconds_per_iteration']:.2f}x time, "
                  f"{r['cpu_seconds_per_iteration'] / ref['cpu_seconds_per_iteration']:.2f}x CPU time, "
                  f"{r['peak_memory_mb'] / ref['peak_memory_mb']:.2f}x memory")


if __name__ == "__main__":
    main()
