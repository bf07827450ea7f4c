"""The training recipe: everything that decides what a training job learns, and nothing else.

A training job's Snakemake params are exactly one value, the recipe as canonical JSON, so that
Snakemake re-trains a fold when (and only when) its recipe changes: the model (trainer,
configuration, network options), the plan (planner, plans name, target spacing, overrides), the
budget (epochs, iterations, learning rate, optimizer, seed, checkpoint interval), the folds
(count, seed, which fold) and the training cases (a digest of case, participant and center of
every training scan). Execution settings (device, threads, memory) and inference settings are not
part of it: changing them never re-trains. The bytes of the training scans are tracked by
Snakemake itself (they are inputs of the training job).
"""

from __future__ import annotations

import hashlib
import json

RECIPE_VERSION = 1

# Plans names nnU-Net's planners write by default (their `plans_name` argument); any other planner
# needs `plan.plans_name` in config.
PLANNER_PLANS = {
    "ExperimentPlanner": "nnUNetPlans",
    "ResEncUNetPlanner": "nnUNetResEncUNetPlans",
    "nnUNetPlannerResEncM": "nnUNetResEncUNetMPlans",
    "nnUNetPlannerResEncL": "nnUNetResEncUNetLPlans",
    "nnUNetPlannerResEncXL": "nnUNetResEncUNetXLPlans",
}

# Keys of config `training` that are execution settings, not part of what is learned.
EXECUTION_KEYS = ("device",)


def plans_name(planner: str, explicit: str | None = None) -> str:
    """The plans name the planner writes: config `plan.plans_name`, else the planner's default."""
    if explicit:
        return explicit
    try:
        return PLANNER_PLANS[planner]
    except KeyError:
        raise ValueError(
            f"plan.planner: {planner!r} is not one of nnU-Net's planners known here ({sorted(PLANNER_PLANS)}); "
            "set plan.plans_name to the plans name it writes"
        ) from None


def cases_digest(rows) -> str:
    """sha256 of the training cases: sorted (case_id, participant_id, center) triples."""
    lines = sorted(f"{r['case_id']}\t{r['participant_id']}\t{r['center']}" for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def training_recipe(*, modality: str, dataset_id: int, experiment: str, fold, trainer: str, configuration: str,
                    network: dict, plan: dict, plans: str, training: dict, folds: int, split_seed: int,
                    cases: str) -> dict:
    """The recipe of one training job (`experiment`: "cv" for fold k, "loco" for a held-out center)."""
    return {
        "recipe_version": RECIPE_VERSION,
        "modality": modality,
        "dataset_id": int(dataset_id),
        "experiment": experiment,
        "fold": fold,
        "trainer": trainer,
        "configuration": configuration,
        "network": network or {},
        "plan": {"planner": plan.get("planner"), "plans_name": plans, "target_spacing": plan.get("target_spacing"),
                 "configurations": plan.get("configurations") or {}},
        "training": {k: v for k, v in sorted(training.items()) if k not in EXECUTION_KEYS},
        "split": {"folds": int(folds), "seed": int(split_seed)} if experiment == "cv" else None,
        "cases_sha256": cases,
    }


def dumps(recipe: dict) -> str:
    """Canonical JSON: the same recipe always gives the same string (a Snakemake param)."""
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


def loads(text: str) -> dict:
    recipe = json.loads(text)
    if recipe.get("recipe_version") != RECIPE_VERSION:
        raise ValueError(f"training recipe version {recipe.get('recipe_version')!r}; this workflow reads "
                         f"version {RECIPE_VERSION}")
    return recipe
