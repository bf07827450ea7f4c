"""Train one model: one fold of the cross-validation, or one held-out-center model, and nothing else.

What is trained comes from one argument, the training recipe (``recipe.py``): trainer class (by
import path, constructed directly), configuration, network options, plans name and budget. The
trainer writes into nnU-Net's own layout under the results root, which is read off the checkpoint
path the workflow asks for (``<root>/Dataset<ID>_<M>/<Trainer>__<plans>__<conf>/fold_<k>/``).
An interrupted run continues from ``checkpoint_latest.pth``; a finished one is not trained again.
Prediction (out-of-fold, held-out center, external) is a separate step (``predict.py``), so that
inference settings never touch training.
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

from workflow_scripts.nnunet import recipe as recipes
from workflow_scripts.nnunet.devices import pick_device
from workflow_scripts.nnunet.env import configure, dataset_name

log = logging.getLogger(__name__)


def build_trainer(trainer_path: str, preprocessed_dir: Path, plans_name: str, configuration: str, fold, device,
                  continue_training: bool, network: dict | None = None):
    """Construct a trainer from the preprocessed dataset's plans and dataset.json.

    `network` (model options from config, e.g. PanSegNet's transformer size) goes into this
    model's copy of the plans as ``panseg_network``; nnU-Net saves those plans beside the
    checkpoints, so prediction rebuilds exactly the trained network.
    """
    from workflow_scripts.trainers import load_trainer_class

    plans_file = preprocessed_dir / f"{plans_name}.json"
    if not plans_file.exists():
        found = sorted(p.name for p in preprocessed_dir.glob("*.json") if p.name not in ("dataset.json",
                                                                                           "dataset_fingerprint.json"))
        raise FileNotFoundError(f"{plans_file}: no such plans (found {found}); plan.plans_name must name what "
                                "the planner wrote")
    plans = json.loads(plans_file.read_text())
    if network:
        plans["panseg_network"] = network
    dataset_json = json.loads((preprocessed_dir / "dataset.json").read_text())
    plans["continue_training"] = continue_training  # nnU-Net 2.8 pops this key in __init__
    cls = load_trainer_class(trainer_path)
    return cls(plans, configuration, fold, dataset_json, device)


def fold_folder(results_root, dataset_id: int, modality: str, trainer_path: str, plans_name: str,
                configuration: str, fold) -> Path:
    """Where nnU-Net puts a fold's output (its own layout, so nnU-Net tools recognise it)."""
    cls_name = trainer_path.partition(":")[2]
    return (Path(results_root) / dataset_name(dataset_id, modality) / f"{cls_name}__{plans_name}__{configuration}"
            / f"fold_{fold}")


def write_curve(trainer, path: Path) -> None:
    """Per-epoch losses, pseudo-Dice and learning rate from nnU-Net's logger, as TSV."""
    import pandas as pd

    from workflow_scripts.common.atomic import write_table

    logs = trainer.logger.get_checkpoint()
    logs = logs.get("local_logger", logs) if isinstance(logs, dict) else logs
    keys = ["train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs"]
    n = min(len(logs.get(k, [])) for k in keys)
    df = pd.DataFrame({k: logs[k][:n] for k in keys})
    df.insert(0, "epoch", range(n))
    write_table(df, path)


def train(recipe: dict, preprocessed_root, checkpoint, splits=None, device_name: str = "auto",
          threads: int = 1) -> Path:
    """Train what `recipe` says into the fold folder of `checkpoint` (…/fold_<k>/checkpoint_final.pth)."""
    from workflow_scripts.common.atomic import write_text

    checkpoint = Path(checkpoint)
    out = checkpoint.parent
    results_root = out.parents[2]
    expected = fold_folder(results_root, recipe["dataset_id"], recipe["modality"], recipe["trainer"],
                           recipe["plan"]["plans_name"], recipe["configuration"], recipe["fold"]
                           if recipe["experiment"] == "cv" else "all")
    if expected != out or checkpoint.name != "checkpoint_final.pth":
        raise ValueError(f"{checkpoint}: this recipe trains into {expected / 'checkpoint_final.pth'}")
    if recipe["experiment"] == "cv" and not splits:
        raise ValueError("a cross-validation fold needs --splits")
    configure(preprocessed=preprocessed_root, results=results_root, threads=threads)
    import torch

    t = recipe["training"]
    random.seed(t["seed"])
    np.random.seed(t["seed"])
    torch.manual_seed(t["seed"])
    device = pick_device(device_name)
    pre = Path(preprocessed_root) / dataset_name(recipe["dataset_id"], recipe["modality"])
    latest = out / "checkpoint_latest.pth"
    resume = latest.exists() or checkpoint.exists()
    fold = recipe["fold"] if recipe["experiment"] == "cv" else "all"
    trainer = build_trainer(recipe["trainer"], pre, recipe["plan"]["plans_name"], recipe["configuration"], fold,
                            device, continue_training=resume, network=recipe["network"])
    trainer.configure_run(t["epochs"], t["iterations_per_epoch"], t["val_iterations_per_epoch"], t["initial_lr"],
                          t["save_every"], splits_file=str(Path(splits).resolve()) if splits else None,
                          seed=t["seed"], optimizer=t["optimizer"])
    t0 = time.time()
    if checkpoint.exists():
        log.info("%s already trained: nothing to do", checkpoint)
        trainer.load_checkpoint(str(checkpoint))
    else:
        if latest.exists():
            trainer.load_checkpoint(str(latest))
            log.info("resuming fold %s from %s at epoch %d", fold, latest, trainer.current_epoch)
        trainer.run_training()
    write_curve(trainer, out / "training_curve.tsv")
    info = {"fold": fold, **{k: t[k] for k in ("epochs", "iterations_per_epoch", "optimizer", "initial_lr", "seed")},
            "recipe": recipe, "device": str(device), "threads": threads, "train_seconds": round(time.time() - t0, 1)}
    write_text(out / "train_info.json", json.dumps(info, indent=1, sort_keys=True))
    log.info("fold %s trained in %.0f s", fold, info["train_seconds"])
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Train one fold (or one held-out-center model) with nnU-Net v2; "
                                             "resumes from checkpoint_latest.pth.")
    ap.add_argument("--recipe", required=True, help="training recipe JSON (workflow_scripts/nnunet/recipe.py), or @FILE")
    ap.add_argument("--preprocessed-root", required=True, help="nnU-Net preprocessed root of this model's data")
    ap.add_argument("--checkpoint", required=True,
                    help="the checkpoint_final.pth to produce (its folder is nnU-Net's fold folder)")
    ap.add_argument("--splits", help="splits JSON (nnU-Net format); cross-validation folds only")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    text = Path(args.recipe[1:]).read_text() if args.recipe.startswith("@") else args.recipe
    train(recipes.loads(text), args.preprocessed_root, args.checkpoint, args.splits, args.device, args.threads)


if __name__ == "__main__":  # nnU-Net starts worker processes with spawn: keep this guard
    sys.exit(main())
