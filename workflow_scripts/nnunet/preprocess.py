"""nnU-Net v2 fingerprint, planning and preprocessing for one modality, with config overrides.

The study uses nnU-Net's own plan. The demo overrides patch size, batch size and features per
stage (fewer stages) so a CPU can train it; the override is applied to the plans file before
preprocessing and recorded in it (``panseg_overrides``) so every later step sees the same plan.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from workflow_scripts.nnunet.env import configure, dataset_name

log = logging.getLogger(__name__)


def apply_overrides(plans: dict, configuration: str, overrides: dict) -> dict:
    """Change one configuration of an nnU-Net plans dict in place; return it.

    overrides: patch_size, batch_size, features_per_stage (its length sets the number of
    stages: the planner's first stages' kernels and strides are kept), spacing.
    """
    if not overrides:
        return plans
    conf = plans["configurations"].get(configuration)
    if conf is None:
        raise ValueError(f"plans have no configuration {configuration!r}; have {sorted(plans['configurations'])}")
    unknown = set(overrides) - {"patch_size", "batch_size", "features_per_stage", "spacing"}
    if unknown:
        raise ValueError(f"plan override for {configuration}: unknown keys {sorted(unknown)}")
    arch = conf["architecture"]["arch_kwargs"]
    if "features_per_stage" in overrides:
        feats = [int(f) for f in overrides["features_per_stage"]]
        n = len(feats)
        if n > arch["n_stages"]:
            raise ValueError(f"plan override for {configuration}: {n} stages requested, the planner made only "
                             f"{arch['n_stages']} for this patch size and spacing")
        arch["n_stages"] = n
        arch["features_per_stage"] = feats
        # Per-stage lists: plain U-Nets have n_conv_per_stage, residual encoders n_blocks_per_stage.
        for key in ("kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage"):
            if key in arch:
                arch[key] = arch[key][:n]
        arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][: n - 1]
    if "patch_size" in overrides:
        patch = [int(p) for p in overrides["patch_size"]]
        if len(patch) != len(conf["patch_size"]):
            raise ValueError(f"plan override for {configuration}: patch_size needs {len(conf['patch_size'])} values")
        conf["patch_size"] = patch
    if "batch_size" in overrides:
        conf["batch_size"] = int(overrides["batch_size"])
    if "spacing" in overrides:
        conf["spacing"] = [float(s) for s in overrides["spacing"]]
    # Every pooling must divide the patch, or the U-Net cannot be built.
    total = np.prod(np.array(arch["strides"]), axis=0)
    if np.any(np.array(conf["patch_size"]) % total):
        raise ValueError(f"plan override for {configuration}: patch_size {conf['patch_size']} is not divisible by "
                         f"the total pooling {total.tolist()} of strides {arch['strides']}")
    plans.setdefault("panseg_overrides", {})[configuration] = overrides
    return plans


def plan_and_preprocess(raw_root, preprocessed_root, dataset_id: int, modality: str, configurations=("3d_fullres",),
                        overrides=None, threads: int = 1, planner: str = "ExperimentPlanner",
                        target_spacing=None, expected_plans: str | None = None) -> Path:
    """Fingerprint, plan (with config overrides) and preprocess; return the plans file.

    `expected_plans`: the plans name the rest of the workflow reads (config plan.plans_name or the
    planner's default); a planner that writes another name is an error naming that config key.

    Everything is written into a temporary folder beside `preprocessed_root`, which replaces it
    whole only when done: a failed run leaves the previous preprocessing (that finished models
    were trained on) as it was, and a case that left the dataset leaves no stale array behind.
    """
    from workflow_scripts.common.atomic import atomic_dir

    with atomic_dir(preprocessed_root) as tmp:
        plans_file = _plan_and_preprocess(raw_root, tmp, dataset_id, modality, configurations, overrides, threads,
                                          planner, target_spacing, expected_plans)
    return Path(preprocessed_root) / plans_file.relative_to(tmp)


def _plan_and_preprocess(raw_root, preprocessed_root, dataset_id, modality, configurations, overrides, threads,
                         planner, target_spacing, expected_plans) -> Path:
    # nnUNet_n_proc_DA=0 breaks the planner (it sets torch threads from it): give it the job's threads.
    configure(raw=raw_root, preprocessed=preprocessed_root, threads=threads, da_processes=threads)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    extract_fingerprints([dataset_id], num_processes=threads, check_dataset_integrity=True, clean=True,
                         verbose=False, show_progress_bar=False)
    # A target spacing is passed to the planner (not patched afterwards) so that nnU-Net plans
    # patch size and pooling for it.
    plans_name = plan_experiments([dataset_id], planner, overwrite_target_spacing=target_spacing)
    if expected_plans and plans_name != expected_plans:
        raise ValueError(f"planner {planner} wrote plans {plans_name!r}, but the workflow expects {expected_plans!r}: "
                         f"set plan.plans_name: {plans_name}")
    plans_file = Path(preprocessed_root) / dataset_name(dataset_id, modality) / f"{plans_name}.json"
    plans = json.loads(plans_file.read_text())
    for conf in configurations:
        if conf not in plans["configurations"]:
            raise ValueError(f"nnU-Net planned no {conf!r} configuration for {modality} "
                             f"(planned: {sorted(plans['configurations'])})")
        apply_overrides(plans, conf, (overrides or {}).get(conf, {}))
        log.info("%s %s plan: patch %s, batch %s, spacing %s, features %s", modality, conf,
                 plans["configurations"][conf]["patch_size"], plans["configurations"][conf]["batch_size"],
                 plans["configurations"][conf]["spacing"],
                 plans["configurations"][conf]["architecture"]["arch_kwargs"]["features_per_stage"])
    plans_file.write_text(json.dumps(plans, indent=1))
    preprocess([dataset_id], plans_name, configurations=list(configurations), num_processes=[threads],
               show_progress_bar=False)
    return plans_file


def main(argv=None):
    ap = argparse.ArgumentParser(description="nnU-Net v2 plan and preprocess one modality.")
    ap.add_argument("--raw-root", required=True)
    ap.add_argument("--preprocessed-root", required=True)
    ap.add_argument("--dataset-id", type=int, required=True)
    ap.add_argument("--modality", required=True)
    ap.add_argument("--configurations", nargs="+", default=["3d_fullres"])
    ap.add_argument("--overrides", default="{}", help="JSON: {configuration: {patch_size, batch_size, ...}}")
    ap.add_argument("--target-spacing", type=float, nargs=3, help="3d_fullres spacing in mm (z y x)")
    ap.add_argument("--planner", default="ExperimentPlanner")
    ap.add_argument("--plans-name", help="the plans name the planner must write (checked)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    plan_and_preprocess(args.raw_root, args.preprocessed_root, args.dataset_id, args.modality, args.configurations,
                        json.loads(args.overrides), args.threads, args.planner, args.target_spacing, args.plans_name)


if __name__ == "__main__":
    main()
