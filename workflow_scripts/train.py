"""Train one fold of one model on one modality with nnU-Net v2's machinery, resuming if interrupted.

The trainer class comes from config by import path and is constructed directly. A run that was
interrupted continues from ``checkpoint_latest.pth``; a finished one is not trained again. After
training, the fold's held-out cases are predicted from their raw images through the same
predictor path as external centers (``predict.py``), giving the out-of-fold masks in each scan's
original geometry; the training curve is saved as a table for the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np

from .nnunet_env import configure, dataset_name

log = logging.getLogger(__name__)


def pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU")
    return torch.device(name)


def build_trainer(trainer_path: str, preprocessed_dir: Path, configuration: str, fold: int, device, continue_training: bool,
                  network: dict | None = None):
    """Construct a trainer from the preprocessed dataset's plans and dataset.json.

    `network` (model options from config, e.g. PanSegNet's transformer size) goes into this
    model's copy of the plans as ``panseg_network``; nnU-Net saves those plans beside the
    checkpoints, so prediction rebuilds exactly the trained network.
    """
    from .trainers import load_trainer_class

    plans = json.loads((preprocessed_dir / "nnUNetPlans.json").read_text())
    if network:
        plans["panseg_network"] = network
    dataset_json = json.loads((preprocessed_dir / "dataset.json").read_text())
    plans["continue_training"] = continue_training  # nnU-Net 2.8 pops this key in __init__
    cls = load_trainer_class(trainer_path)
    return cls(plans, configuration, fold, dataset_json, device)


def fold_folder(results_root, dataset_id: int, modality: str, trainer_path: str, configuration: str, fold: int) -> Path:
    """Where nnU-Net puts a fold's output (its own layout, so nnU-Net tools recognise it)."""
    cls_name = trainer_path.partition(":")[2]
    return (Path(results_root) / dataset_name(dataset_id, modality) / f"{cls_name}__nnUNetPlans__{configuration}"
            / f"fold_{fold}")


def write_curve(trainer, path: Path) -> None:
    """Per-epoch losses, pseudo-Dice and learning rate from nnU-Net's logger, as TSV."""
    import pandas as pd

    logs = trainer.logger.get_checkpoint()
    logs = logs.get("local_logger", logs) if isinstance(logs, dict) else logs
    keys = ["train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs"]
    n = min(len(logs.get(k, [])) for k in keys)
    df = pd.DataFrame({k: logs[k][:n] for k in keys})
    df.insert(0, "epoch", range(n))
    df.to_csv(path, sep="\t", index=False)


def predict_validation(trainer, raw_dataset: Path, out_dir: Path, mirroring: bool) -> list[float]:
    """Predict the fold's validation cases into out_dir; return their Dice values."""
    import pandas as pd

    from .evaluate import evaluate_pair
    from .predict import make_predictor, predict_cases

    _, val_keys = trainer.do_split()
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = make_predictor(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                               [trainer.network.state_dict()], trainer.dataset_json, type(trainer).__name__,
                               trainer.device, mirroring, trainer.inference_allowed_mirroring_axes)
    cases = pd.DataFrame({"case_id": val_keys, "image": [str(raw_dataset / "imagesTr" / f"{k}_0000.nii.gz")
                                                         for k in val_keys]})
    predict_cases(predictor, cases, out_dir)
    return [evaluate_pair(out_dir / f"{k}.nii.gz", raw_dataset / "labelsTr" / f"{k}.nii.gz")["dice"] for k in val_keys]


def train_fold(args) -> Path:
    configure(preprocessed=args.preprocessed_root, results=args.results_root, threads=args.threads)
    import torch

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    pre = Path(args.preprocessed_root) / dataset_name(args.dataset_id, args.modality)
    out = fold_folder(args.results_root, args.dataset_id, args.modality, args.trainer, args.configuration, args.fold)
    final, latest = out / "checkpoint_final.pth", out / "checkpoint_latest.pth"
    resume = latest.exists() or final.exists()
    trainer = build_trainer(args.trainer, pre, args.configuration, args.fold, device, continue_training=resume,
                            network=json.loads(args.network))
    trainer.configure_run(args.epochs, args.iterations, args.val_iterations, args.lr, args.save_every,
                          splits_file=str(Path(args.splits).resolve()), test_time_mirroring=args.mirroring,
                          seed=args.seed, optimizer=args.optimizer)
    t0 = time.time()
    if final.exists():
        log.info("fold %d already trained (%s): validation only", args.fold, final)
        trainer.load_checkpoint(str(final))
    else:
        if latest.exists():
            trainer.load_checkpoint(str(latest))
            log.info("resuming fold %d from %s at epoch %d", args.fold, latest, trainer.current_epoch)
        trainer.run_training()
    t_train = time.time() - t0
    raw = Path(args.raw_root) / dataset_name(args.dataset_id, args.modality)
    val_dice = predict_validation(trainer, raw, out / "validation", args.mirroring)
    write_curve(trainer, out / "training_curve.tsv")
    info = {
        "modality": args.modality, "trainer": args.trainer, "configuration": args.configuration, "fold": args.fold,
        "epochs": args.epochs, "iterations_per_epoch": args.iterations, "initial_lr": args.lr, "optimizer": args.optimizer, "seed": args.seed,
        "device": str(device), "threads": args.threads, "train_seconds": round(t_train, 1),
        "total_seconds": round(time.time() - t0, 1), "validation_mean_dice": round(float(np.mean(val_dice)), 4),
        "n_validation_cases": len(val_dice),
    }
    (out / "train_info.json").write_text(json.dumps(info, indent=1))
    log.info("fold %d done: validation Dice %.3f in %.0f s", args.fold, info["validation_mean_dice"], info["total_seconds"])
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Train one fold with nnU-Net v2 (resumes from checkpoint_latest).")
    ap.add_argument("--preprocessed-root", required=True)
    ap.add_argument("--raw-root", required=True, help="nnU-Net raw root (validation cases are predicted from it)")
    ap.add_argument("--results-root", required=True)
    ap.add_argument("--dataset-id", type=int, required=True)
    ap.add_argument("--modality", required=True)
    ap.add_argument("--trainer", required=True, help="import path module:Class")
    ap.add_argument("--configuration", default="3d_fullres")
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--splits", required=True, help="splits JSON (nnU-Net format)")
    ap.add_argument("--network", default="{}", help="JSON of model options (e.g. PanSegNet's transformer size)")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--iterations", type=int, required=True, help="training iterations per epoch")
    ap.add_argument("--val-iterations", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--mirroring", action=argparse.BooleanOptionalAction, default=True,
                    help="test-time mirroring in validation")
    return ap.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train_fold(parse_args(argv))


if __name__ == "__main__":  # nnU-Net starts worker processes with spawn: keep this guard
    sys.exit(main())
