"""Time the statistics step at the study's size on synthetic per-case tables (run by hand, not a test).

The study's shape (docs/facts.md §1, config/paper.yaml): CT 1,350 scans (MSD 1,270 in cross-validation,
NIH 80 external, one scan per participant), T1 385 and T2 382 scans from 5 centers (all in
cross-validation; ~1.5 scans per participant) = 2,117 scans, x 4 models, plus leave-one-center-out
rows of 2 models for T1 and T2. The statistics job runs once per modality, as in the workflow;
the bootstrap-and-tests part and the mixed models are timed separately.

    python benchmarks/bench_stats.py [--n-boot 2000] [--scale study|demo] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts.evaluation import stats  # noqa: E402

MODELS = ["pansegnet", "nnunet", "unet2d", "axunet"]
LOCO_MODELS = ["pansegnet", "nnunet"]
SHIFT = {"pansegnet": 0.0, "nnunet": -0.005, "unet2d": -0.06, "axunet": -0.03}


# The study (config/paper.yaml) and the demo (config/config.yaml: 2 modalities x 5 centers x 8 scans,
# 3 cross-validation and 2 external centers, 2 models, a quarter of the participants with 2 scans).
PLANS = {
    "study": {"CT": [("MSD", "cv", 1270, 1.0), ("NIH", "external", 80, 1.0)],
              "T1": [(c, "cv", n, 1.54) for c, n in zip(["AHN", "MCF", "MCA", "NWU", "NYU"], [77, 77, 77, 77, 77])],
              "T2": [(c, "cv", n, 1.54) for c, n in zip(["AHN", "MCF", "MCA", "NWU", "NYU"], [77, 77, 76, 76, 76])]},
    "demo": {m: [("AHN", "cv", 8, 1.33), ("MCF", "cv", 8, 1.33), ("NWU", "cv", 8, 1.33), ("MCA", "external", 8, 1.33),
                 ("NYU", "external", 8, 1.33)] for m in ("T1", "T2")},
}


def study_tables(seed: int = 0, scale: str = "study") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = PLANS[scale]
    models = MODELS if scale == "study" else ["nnunet", "pansegnet"]
    rows = []
    for modality, centers in plan.items():
        for center, setting, n_scans, per_person in centers:
            n_people = int(round(n_scans / per_person))
            people = np.concatenate([np.arange(n_people), rng.integers(0, n_people, n_scans - n_people)])
            person_effect = rng.normal(0, 0.04, n_people)
            center_effect = rng.normal(0, 0.02)
            for k, p in enumerate(people):
                case = f"{center}_{k:04d}"
                vref = rng.uniform(30, 110)
                entries = [(m, setting) for m in models]
                if modality != "CT" and scale == "study":
                    entries += [(m, "loco") for m in LOCO_MODELS]
                for model, s in entries:
                    dice = float(np.clip(0.85 + SHIFT[model] + center_effect + person_effect[p] - 0.03 * (s == "loco")
                                         + rng.normal(0, 0.05), 0, 1))
                    empty = "pred" if rng.random() < 0.005 else ""
                    if empty:
                        dice = 0.0
                    hd = 60.0 if empty else float(2 + 30 * (1 - dice) + rng.gamma(2, 1))
                    rows.append(dict(case=case, modality=modality, model=model, setting=s,
                                     n_folds=5 if s != "loco" else np.nan, center=center,
                                     participant_id=f"{center}-P{p}", role="train-cv" if s == "cv" else "external",
                                     data_source="synthetic", dice=dice, nsd=0.0 if empty else min(1.0, dice + 0.05),
                                     hd95_mm=hd, precision=dice, recall=dice,
                                     vol_pred_ml=0.0 if empty else vref * (1 + rng.normal(0, 0.08)), vol_ref_ml=vref,
                                     empty=empty))
    return pd.DataFrame(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", choices=sorted(PLANS), default="study", help="study (2,117 scans) or demo (80 scans)")
    ap.add_argument("--out-dir", help="also write the tables here")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    per_case = study_tables(args.seed, args.scale)
    print(f"synthetic per-case rows: {len(per_case)} ({per_case.drop_duplicates(['modality', 'case']).shape[0]} scans, "
          f"{per_case.model.nunique()} models; settings {sorted(per_case.setting.unique())}) in "
          f"{time.perf_counter() - t:.1f} s")
    opts = stats.Options(reference="pansegnet", models=MODELS, n_boot=args.n_boot, seed=20240517)
    totals = {}
    wall = time.perf_counter()
    for modality, g in per_case.groupby("modality"):
        out = stats.run_all(g, opts)
        for r in out["timing"].itertuples():
            totals[r.step] = totals.get(r.step, 0.0) + r.seconds
        print(f"{modality}: " + ", ".join(f"{r.step} {r.seconds:.1f} s" for r in out["timing"].itertuples())
              + f"; {len(out['comparisons'])} comparisons, {len(out['cross_setting'])} cross-setting, "
                f"{len(out['mixed_model'])} mixed-model rows (converged: {out['mixed_model'].converged.all()})")
        if args.out_dir:
            d = Path(args.out_dir) / modality
            d.mkdir(parents=True, exist_ok=True)
            for name in stats.OUTPUTS:
                out[name].to_csv(d / f"{name}.tsv", sep="\t", index=False, float_format="%.6g")
    total = time.perf_counter() - wall
    print(f"n_boot {args.n_boot}: " + ", ".join(f"{k} {v:.1f} s" for k, v in totals.items()) + f"; total {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
