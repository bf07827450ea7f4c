"""One training iteration of PanSegNet vs plain nnU-Net on the same plan, on the CPU.

Run by hand after the demo's preprocessing exists (e.g. after `make demo`):
    python benchmarks/bench_train_step.py [--modality T1] [--network '{"d_model":512,...}']
Both trainers get the same plan, batch and data (one batch drawn once and reused); the time is
the median of N iterations after a warm-up (forward, loss with deep supervision, backward,
gradient clipping, optimizer step: nnU-Net's own train_step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data", help="the workflow's data folder")
    ap.add_argument("--modality", default="T1")
    ap.add_argument("--dataset-id", type=int, default=501)
    ap.add_argument("--network", default='{"d_model": 512, "heads": 8, "layers": 8, "ff_dim": 512, "dropout": 0.3}',
                    help="PanSegNet transformer (default: the paper's size)")
    ap.add_argument("--features", type=int, nargs="+",
                    help="U-Net features per stage for both models (default: the demo plan's); e.g. nnU-Net's "
                         "own 32 64 128 256 for this patch")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from workflow_scripts.nnunet.env import configure, dataset_name

    pre = Path(args.data) / "nnunet_preprocessed" / args.modality
    if args.features:  # same data, another U-Net width: a private copy of the plans, data linked
        import tempfile

        src = pre / dataset_name(args.dataset_id, args.modality)
        pre = Path(tempfile.mkdtemp(prefix="panseg-bench-"))
        dst = pre / src.name
        dst.mkdir()
        for item in src.iterdir():
            if item.name != "nnUNetPlans.json":
                (dst / item.name).symlink_to(item.resolve())
        plans = json.loads((src / "nnUNetPlans.json").read_text())
        arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        if len(args.features) != arch["n_stages"]:
            raise SystemExit(f"--features needs {arch['n_stages']} values for this plan")
        arch["features_per_stage"] = args.features
        (dst / "nnUNetPlans.json").write_text(json.dumps(plans))
    configure(preprocessed=pre, results="/tmp/panseg-bench-train", threads=args.threads)
    import numpy as np
    import torch

    from workflow_scripts.nnunet.train import build_trainer

    splits = Path(args.data) / "splits" / f"{args.modality}.json"
    batch, rows = None, []
    for name, path, net in [("nnunet", "workflow_scripts.trainers.nnunet:NnUNetTrainer", None),
                            ("pansegnet", "workflow_scripts.trainers.pansegnet:PanSegNetTrainer", json.loads(args.network))]:
        torch.manual_seed(0)
        np.random.seed(0)
        tr = build_trainer(path, pre / dataset_name(args.dataset_id, args.modality), "3d_fullres", 0,
                           torch.device("cpu"), False, net)
        tr.configure_run(1, args.iterations, 1, 1e-3, 1, str(splits), False, optimizer="adamw")
        tr.on_train_start()
        batch = batch or next(tr.dataloader_train)
        tr.train_step(batch)  # warm-up
        times = []
        for _ in range(args.iterations):
            t0 = time.perf_counter()
            tr.train_step(batch)
            times.append(time.perf_counter() - t0)
        rows.append((name, statistics.median(times), sum(p.numel() for p in tr.network.parameters())))
        print(f"{name}: {rows[-1][1]:.3f} s/iteration, {rows[-1][2] / 1e6:.2f} M parameters, "
              f"patch {tr.configuration_manager.patch_size}, batch {tr.configuration_manager.batch_size}", flush=True)
    print(f"pansegnet / nnunet time per iteration: {rows[1][1] / rows[0][1]:.2f}×")


if __name__ == "__main__":
    main()
