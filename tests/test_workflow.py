"""The whole chain on a tiny SYNTHETIC study: every declared output exists and makes sense."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from helpers import REPO, job_counts, snakemake

pytestmark = pytest.mark.workflow
TINY = REPO / "tests" / "data" / "tiny.yaml"


def _tiny_models():
    """The tiny config's models and reference model (statistics.reference_model, else the documented rule)."""
    import yaml

    cfg = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    models = list(cfg["models"])
    ref = (cfg.get("statistics") or {}).get("reference_model")
    return models, ref or ("pansegnet" if "pansegnet" in models else models[0]), cfg["folds"]


TINY_MODELS, TINY_REFERENCE, FOLDS = _tiny_models()
MODELS = TINY_MODELS


@pytest.fixture(scope="module")
def run_dir(tiny_study):
    return tiny_study  # the shared tiny run (tests/conftest.py)


def test_manifest(run_dir):
    m = pd.read_csv(run_dir / "data" / "manifest.tsv", sep="\t")
    assert len(m) == 16 and set(m.center) == {"AHN", "MCF", "NWU", "NYU"}
    assert set(m.role) == {"train-cv", "external"} and (m.data_source == "synthetic").all()
    assert m.participant_id.nunique() < len(m)  # repeat scans grouped


def test_folds_grouped_by_participant(run_dir):
    folds = pd.read_csv(run_dir / "data" / "splits" / "T1.tsv", sep="\t")
    assert len(folds) == 12 and folds.fold.nunique() == FOLDS
    assert (folds.groupby("participant_id").fold.nunique() == 1).all()
    said = folds.stratified_by.unique()  # stratification by center, or why not (never silently)
    assert len(said) == 1 and (said[0] == "center" or said[0].startswith("none: "))


N_LOCO = 12  # loco_models [nnunet] x the 12 scans of the 3 training centers


def test_per_case_tables(run_dir):
    per_case = pd.read_csv(run_dir / "results" / "tables" / "per_case.tsv", sep="\t", keep_default_na=False)
    assert len(per_case) == 16 * len(MODELS) + N_LOCO and sorted(per_case.model.unique()) == sorted(MODELS)
    for col in ["case", "setting", "n_folds", "participant_id", "dice", "nsd", "hd95_mm", "precision", "recall",
                "vol_pred_ml", "vol_ref_ml", "role", "center"]:
        assert col in per_case
    assert per_case.groupby("setting").size().to_dict() == {"cv": 12 * len(MODELS), "external": 4 * len(MODELS),
                                                            "loco": N_LOCO}
    assert (per_case[per_case.setting != "loco"].n_folds.astype(int) == FOLDS).all()
    assert (per_case.participant_id != "").all() and per_case.participant_id.nunique() < 16
    for col in ("dice", "nsd"):
        v = pd.to_numeric(per_case[col], errors="coerce").dropna()
        assert ((v >= 0) & (v <= 1)).all()
    assert (per_case.vol_ref_ml.astype(float) > 10).all()
    summary = pd.read_csv(run_dir / "results" / "tables" / "summary.csv")
    assert {"AHN", "NYU", "all"} <= set(summary.scope) and set(summary.setting) == {"cv", "external", "loco"}
    allrows = summary[summary.scope == "all"].set_index(["setting", "model"])
    assert (allrows.n.xs("cv") == 12).all() and (allrows.n.xs("external") == 4).all() and len(allrows) == 2 * len(
        MODELS) + 1
    assert (allrows.n_participants <= allrows.n).all()
    assert "SYNTHETIC" in (run_dir / "results" / "tables" / "summary.md").read_text(encoding="utf-8")


def test_extra_annotations_and_agreement(run_dir):
    m = pd.read_csv(run_dir / "data" / "manifest.tsv", sep="\t", keep_default_na=False)
    annotated = m[m.label_rater2 != ""]
    assert len(annotated) == 4 and annotated.center.nunique() == 4  # round(4/3) = 1 case per center
    assert (annotated.label_repeat != "").all() and (m[m.label_rater2 == ""].label_repeat == "").all()
    agr = pd.read_csv(run_dir / "results" / "stats" / "T1" / "agreement.tsv", sep="\t")
    assert sorted(agr.kind.value_counts().to_dict().items()) == [("inter", 4), ("intra", 4)]
    assert ((agr.kappa_volume > 0.5) & (agr.kappa_volume < 1) & (agr.kappa_box > 0.5)).all()
    assert agr[agr.kind == "intra"].dice.mean() > agr[agr.kind == "inter"].dice.mean()
    table = pd.read_csv(run_dir / "results" / "tables" / "agreement.csv")
    assert len(table) == 4 and set(table.region) == {"volume", "box"} and (table.n_cases == 4).all()


def test_statistics_against_reference(run_dir):
    stats = run_dir / "results" / "stats" / "T1"
    comp = pd.read_csv(stats / "comparisons.tsv", sep="\t")
    others = len(TINY_MODELS) - 1
    contract = ["modality", "setting", "unit", "scope", "metric", "model", "reference", "n_pairs", "n_participants",
                "n_excluded", "mean_diff", "ci_low", "ci_high", "d_z", "t", "p_t", "p_t_holm", "p_wilcoxon",
                "p_wilcoxon_holm"]
    assert set(contract) <= set(comp.columns)
    # per model: 2 units x 3 metrics x (cv: all + 3 centers; external: all + NYU)
    assert len(comp) == others * 2 * 3 * (4 + 2)
    assert set(comp.setting) == {"cv", "external"} and set(comp.unit) == {"participant", "scan"}
    assert set(comp.reference) == {TINY_REFERENCE} and TINY_REFERENCE not in set(comp.model)
    scan = comp[(comp.unit == "scan") & (comp.metric == "dice")]
    assert (scan[(scan.setting == "cv") & (scan.scope == "all")].n_pairs == 12).all()
    assert (scan[scan.scope.isin(["AHN", "MCF", "NWU", "NYU"])].n_pairs == 4).all()
    part = comp[(comp.unit == "participant") & (comp.metric == "dice")]
    assert (part.n_pairs == part.n_participants).all() and (part[part.scope == "all"].n_pairs < 16).all()
    assert (comp.n_excluded >= 0).all() and set(comp.family.str.split("/").str[-1]) == {"all centers", "per center"}
    # 4 pairs per center < min_pairs (5): no p-value, and the note says why
    assert comp[comp.scope == "AHN"].p_t.isna().all() and comp[comp.scope == "AHN"].note.str.contains("min_pairs").all()
    cross = pd.read_csv(stats / "cross_setting.tsv", sep="\t")
    assert set(zip(cross.setting, cross.reference_setting, cross.model)) == {("loco", "cv", "nnunet")}
    assert len(cross) == 2 * 3 * (1 + 3) and set(cross.family.str.split("/").str[1]) == {"loco vs cv"}
    mixed = pd.read_csv(stats / "mixed_model.tsv", sep="\t", keep_default_na=False)
    assert {"effect", "ci_low", "ci_high", "p", "center_var", "participant_var", "residual_var", "center_share",
            "converged", "note"} <= set(mixed.columns)
    assert set(mixed.setting) == {"cv", "external"} and len(mixed) == others * 3 * 2
    assert mixed[mixed.setting == "cv"].formula.str.contains("(1 | center)", regex=False).all()  # 3 centers
    assert mixed[mixed.setting == "external"].note.str.contains("fewer than 5 scans").all()  # NYU: 4 scans
    unconverged = mixed[mixed.converged.astype(str) != "True"]
    assert unconverged.note.str.len().gt(0).all()  # a fit that does not converge says so
    failures = pd.read_csv(stats / "failures.tsv", sep="\t")
    assert {"p_mcnemar", "p_mcnemar_holm", "failures_model", "failures_reference"} <= set(failures.columns)
    vol = pd.read_csv(stats / "volume.tsv", sep="\t")
    assert len(vol) == 2 * len(TINY_MODELS) + 1 and {"icc", "icc_ci_low", "bias_ci_low", "loa_high_ci_high",
                                                     "prop_bias_p"} <= set(vol.columns)
    assert (vol[vol.setting == "cv"].n_scans == 12).all() and (vol[vol.setting == "external"].n_scans == 4).all()
    desc = pd.read_csv(stats / "descriptives.tsv", sep="\t")
    assert {"n_participants", "n_scans", "dice_ci_low", "nsd_mean", "hd95_nonfailed_mean"} <= set(desc.columns)


def test_paper_tables_and_figures(run_dir):
    tables = run_dir / "results" / "tables"
    for name in ["modality_T1", "cross_center", "agreement", "paired_tests", "cross_setting", "failures",
                 "mixed_model", "volume_agreement", "loco"]:
        for ext in ["csv", "md", "tex", "html"]:
            assert (tables / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    modality = pd.read_csv(tables / "modality_T1.csv")
    # A row per setting x model (reference first in each setting), then the paper's published row.
    assert modality.setting.tolist() == ["cv"] * len(TINY_MODELS) + ["external"] * len(TINY_MODELS) + ["loco",
                                                                                                      "published"]
    assert modality.model.iloc[0] == TINY_REFERENCE and sorted(modality.model[modality.setting == "cv"]) == sorted(
        TINY_MODELS)
    assert modality[modality.setting == "cv"].n_scans.eq(12).all() and modality[modality.setting == "external"].n_scans.eq(4).all()
    assert (modality.n_participants[modality.setting == "cv"] <= 12).all()
    assert {"dice_ci_low", "dice_ci_high", "nsd_mean", "vol_icc", "dice_p_t_holm", "dice_p_wilcoxon_holm"} <= set(
        modality.columns)
    md = (tables / "modality_T1.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in md and "published (paper)" in md and "85.0 ± 7.9" in md
    cc = pd.read_csv(tables / "cross_center.csv")
    assert list(zip(cc.setting, cc.center)) == [("cv", "AHN"), ("cv", "MCF"), ("cv", "NWU"), ("external", "NYU"),
                                                ("loco", "AHN"), ("loco", "MCF"), ("loco", "NWU")]
    assert cc[f"{TINY_REFERENCE}_n"].tolist()[:4] == [4, 4, 4, 4]
    assert "per center" in (tables / "cross_center.md").read_text(encoding="utf-8")
    figs = run_dir / "results" / "figures" / "T1"
    stems = ["dice_hd95_by_model", "dice_hd95_by_center", "volume_scatter", "bland_altman"]
    stems += [f"{m}/{name}" for m in TINY_MODELS for name in ("training_curves", "overlays")]
    for stem in stems:
        for ext in ["png", "svg", "tsv"]:
            assert (figs / f"{stem}.{ext}").exists(), f"{stem}.{ext}"
        assert "SYNTHETIC" in (figs / f"{stem}.svg").read_text(encoding="utf-8"), stem
    assert set(pd.read_csv(figs / "dice_hd95_by_model.tsv", sep="\t").setting) == {"cv", "external", "loco"}
    for m in TINY_MODELS:
        assert len(pd.read_csv(figs / m / "training_curves.tsv", sep="\t")) == FOLDS * 2  # folds x 2 epochs
        assert pd.read_csv(figs / m / "overlays.tsv", sep="\t").pick.tolist() == ["best", "median", "worst"]


def test_versions_and_report(run_dir):
    import yaml

    info = yaml.safe_load((run_dir / "results" / "versions.yml").read_text(encoding="utf-8"))
    assert info["packages"]["snakemake"] and len(info["config_sha256"]) == 64
    assert info["config"]["study"] == "workflow-test" and "cuda_available" in info["torch"]
    snakemake("--report", "results/report.html", "--configfile", str(TINY), workdir=run_dir, timeout=300)
    report = (run_dir / "results" / "report.html").read_text(encoding="utf-8")
    assert len(report) > 100_000 and "workflow-test" in report


@pytest.mark.parametrize("model", MODELS)
def test_masks_in_original_geometry(run_dir, model):
    m = pd.read_csv(run_dir / "data" / "manifest.tsv", sep="\t").set_index("case_id")
    for case, kind in [("NYU_0001", "ensemble_masks"), ("AHN_0001", "cv_masks")]:
        center = case.split("_")[0]
        mask = sitk.ReadImage(str(run_dir / "results" / "T1" / model / "centers" / center / kind / f"{case}.nii.gz"))
        image = sitk.ReadImage(str(run_dir / m.image[case]))
        assert mask.GetSize() == image.GetSize()
        assert np.allclose(mask.GetDirection(), image.GetDirection())
        assert np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
        assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


@pytest.mark.parametrize("model, run", [("nnunet", "NnUNetTrainer__nnUNetPlans__3d_fullres"),
                                        ("pansegnet", "PanSegNetTrainer__nnUNetPlans__3d_fullres"),
                                        ("unet2d", "UNet2DTrainer__nnUNetPlans__2d"),
                                        ("axunet", "AXUNetTrainer__nnUNetPlans__2d")])
def test_training_outputs(run_dir, model, run):
    folds = sorted((run_dir / "results" / "T1" / model / "Dataset901_T1" / run).glob("fold_*"))
    assert len(folds) == FOLDS
    for f in folds:
        assert (f / "checkpoint_final.pth").exists() and (f / "train_info.json").exists()
        curve = pd.read_csv(f / "training_curve.tsv", sep="\t")
        assert len(curve) == 2 and curve.train_losses.notna().all()


def test_second_run_does_nothing(run_dir):
    proc = snakemake("-n", "--configfile", str(TINY), workdir=run_dir, timeout=120)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_new_budget_retrains_only_training_and_after(run_dir, tmp_path):
    import yaml

    cfg = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    cfg["training"]["epochs"] = 3
    path = tmp_path / "more.yaml"
    path.write_text(yaml.safe_dump(cfg))
    counts = job_counts(snakemake("-n", "--configfile", str(path), workdir=run_dir, timeout=120).stdout)
    assert counts.get("train") == FOLDS * len(MODELS) and counts.get("train_loco") == 3
    for upstream in ("synthetic_source", "prepare_center", "preprocess", "split", "nnunet_raw"):
        assert upstream not in counts


def test_leave_one_center_out(run_dir):
    for center in ("AHN", "MCF", "NWU"):
        loco = pd.read_csv(run_dir / "results" / "T1" / "nnunet" / "centers" / center / "loco_metrics.tsv", sep="\t")
        cv = pd.read_csv(run_dir / "results" / "T1" / "nnunet" / "centers" / center / "metrics.tsv", sep="\t")
        assert (loco.setting == "loco").all() and (cv.setting == "cv").all() and (cv.n_folds == FOLDS).all()
        assert sorted(loco.case) == sorted(cv.case) and {"nsd", "participant_id"} <= set(loco.columns)
    table = pd.read_csv(run_dir / "results" / "tables" / "loco.csv")
    assert table.center.tolist() == ["AHN", "MCF", "NWU", "all"] and set(table.model) == {"nnunet"}
    assert {"dice_cv_mean", "dice_loco_mean", "dice_mean_diff", "dice_ci_low", "dice_ci_high", "dice_p_t_holm",
            "dice_p_wilcoxon_holm", "hd95_p_t_holm", "dice_n_participants", "dice_n_scans", "hd95_n_scans"} <= set(
        table.columns)
    assert table.dice_n_scans.tolist() == [4, 4, 4, 12]  # the Dice pairs, never overwritten by HD95's
    md = (run_dir / "results" / "tables" / "loco.md").read_text(encoding="utf-8")
    assert "loco" in md and f"{FOLDS}-fold CV" in md and "Δ Dice (%) [CI]" in md


def test_loco_models_never_see_their_center(run_dir):
    """Each held-out-center model has its own raw dataset, fingerprint, plan and preprocessed data,
    made from the other training centers only; no scan of the held-out center reaches it."""
    cases = pd.read_csv(run_dir / "data" / "manifest.tsv", sep="\t")
    for center in ("AHN", "MCF", "NWU"):
        own = set(cases.case_id[cases.center == center])
        others = set(cases.case_id[(cases.role == "train-cv") & (cases.center != center)])
        raw = run_dir / "data" / "nnunet_raw_loco" / "T1" / center / "Dataset901_T1"
        assert {p.name[: -len("_0000.nii.gz")] for p in (raw / "imagesTr").iterdir()} == others
        assert {p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").iterdir()} == others
        assert json.loads((raw / "dataset.json").read_text())["numTraining"] == len(others)
        pre = run_dir / "data" / "nnunet_preprocessed_loco" / "T1" / center / "Dataset901_T1"
        fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
        assert len(fingerprint["shapes_after_crop"]) == len(others)
        stems = {p.name.split(".")[0].removesuffix("_seg") for p in pre.rglob("*")
                 if p.is_file() and p.name.startswith(("AHN", "MCF", "NWU"))}
        assert stems == others and not stems & own
        info = json.loads(next((run_dir / "results" / "T1" / "nnunet" / "loco" / center).rglob("train_info.json"))
                          .read_text())
        assert info["recipe"]["experiment"] == "loco" and info["recipe"]["fold"] == center
        log = next((run_dir / "results" / "T1" / "nnunet" / "loco" / center).rglob("training_log_*.txt")).read_text()
        assert not any(c in log for c in own), f"a {center} scan appears in its held-out model's training log"


def dry_run_counts(run_dir, cfg_path):
    return job_counts(snakemake("-n", "--configfile", str(cfg_path), workdir=run_dir, timeout=180).stdout)


# Cheap rules that aggregate every center: they may re-run whenever any center changes.
AGGREGATES = {"manifest", "tables", "paired_stats", "rater_agreement", "figures_metrics", "figure_overlays",
              "paper_tables", "loco_table", "versions", "all"}


def assert_only(counts, expected):
    """`expected` rules with exactly these counts, plus aggregates, and nothing else."""
    for rule, n in expected.items():
        assert counts.get(rule) == n, (rule, counts)
    extra = set(counts) - set(expected) - AGGREGATES
    assert not extra, f"unexpected jobs {extra}: {counts}"


def test_new_external_center_runs_only_its_jobs(run_dir, tmp_path):
    import yaml

    cfg = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    cfg["sources"]["newsite"] = {"type": "synthetic", "modalities": ["T1"], "centers": ["XYZ"], "cases_per_center": 2}
    cfg["modalities"]["T1"]["external_centers"] = ["NYU", "XYZ"]
    cfg["modalities"]["T1"]["center_sources"] = {"XYZ": "newsite"}
    path = tmp_path / "newcenter.yaml"
    path.write_text(yaml.safe_dump(cfg))
    counts = dry_run_counts(run_dir, path)
    assert_only(counts, {"synthetic_source": 1, "prepare_center": 1, "predict_external": len(MODELS),
                         "evaluate_center": len(MODELS)})


def test_rerunning_prepare_changes_nothing_training_uses(run_dir):
    watched = sorted((run_dir / "data" / "prepared" / "T1").glob("*.tsv")) + sorted((run_dir / "data" / "splits").glob("*"))
    before = {p: p.read_bytes() for p in watched}
    snakemake("--cores", "2", "--configfile", str(TINY), "--forcerun", "prepare_center", "--until", "prepare_center",
              workdir=run_dir, timeout=300)
    assert {p: p.read_bytes() for p in watched} == before
    proc = snakemake("-n", "--configfile", str(TINY), workdir=run_dir, timeout=180)
    assert "Nothing to be done" in proc.stdout + proc.stderr, job_counts(proc.stdout)


def test_changed_external_labels_rerun_only_that_center(run_dir):
    """A label edited in place is validated again (every file of a center is an input of its
    preparation) and re-evaluated; the center's scans are unchanged, so nothing is predicted or
    trained again and no other center is touched."""
    label = run_dir / "data" / "raw" / "synthetic" / "t1" / "labelsTr" / "NYU_0001.nii.gz"
    original = label.read_bytes()
    img = sitk.ReadImage(str(label))
    eroded = sitk.BinaryErode(img, [1, 1, 0])
    sitk.WriteImage(sitk.Cast(eroded, sitk.sitkUInt8), str(label))
    try:
        counts = dry_run_counts(run_dir, TINY)
        assert_only(counts, {"prepare_center": 1, "evaluate_center": len(MODELS)})
    finally:
        label.write_bytes(original)


def test_interrupted_training_resumes(run_dir, tmp_path):
    """Kill a training run after its first checkpoint; the re-run continues from it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from workflow_scripts.nnunet import recipe

    plan = {"planner": "ExperimentPlanner", "target_spacing": [4.0, 3.0, 3.0],
            "configurations": {"3d_fullres": {"features_per_stage": [4, 8, 16], "batch_size": 2}}}
    r = recipe.training_recipe(modality="T1", dataset_id=901, experiment="cv", fold=0,
                               trainer="workflow_scripts.trainers.nnunet:NnUNetTrainer", configuration="3d_fullres",
                               network={}, plan=plan, plans="nnUNetPlans", folds=FOLDS, split_seed=12345,
                               training={"epochs": 6, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1,
                                         "save_every": 1, "optimizer": "adamw", "initial_lr": 0.003, "seed": 1},
                               cases="-")
    fold = tmp_path / "res" / "Dataset901_T1" / "NnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    args = [sys.executable, "-m", "workflow_scripts.nnunet.train", "--recipe", recipe.dumps(r), "--preprocessed-root",
            str(run_dir / "data" / "nnunet_preprocessed" / "T1"), "--checkpoint", str(fold / "checkpoint_final.pth"),
            "--splits", str(run_dir / "data" / "splits" / "T1.json"), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (fold / "checkpoint_latest.pth").exists():
        assert proc.poll() is None, "training ended before writing a checkpoint"
        assert time.time() < deadline, "no checkpoint_latest.pth within 5 minutes"
        time.sleep(0.5)
    time.sleep(1.0)  # let torch.save finish writing
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (fold / "checkpoint_final.pth").exists()
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming fold 0" in out.stderr + out.stdout
    assert (fold / "checkpoint_final.pth").exists()
    assert len(pd.read_csv(fold / "training_curve.tsv", sep="\t")) == 6


@pytest.mark.parametrize("model", MODELS)
def test_bundles_segment_like_the_workflow(run_dir, tmp_path, model):
    """`all` exports one bundle per model; segmenting with it (2-D models too) gives exactly the
    workflow's ensemble mask."""
    import shutil

    from workflow_scripts.deployment import segment

    m = pd.read_csv(run_dir / "data" / "manifest.tsv", sep="\t").set_index("case_id")
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(run_dir / m.image["NYU_0001"], scans / "NYU_0001_0000.nii.gz")
    bundle = run_dir / "results" / "T1" / model / "bundle" / f"panseg_T1_{model}.tar"
    summary, info = segment.run(bundle, scans, tmp_path / "out", device="cpu", threads=1)
    assert list(summary.status) == ["ok"] and info["folds"] == list(range(FOLDS))
    ours = sitk.ReadImage(str(tmp_path / "out" / "masks" / "NYU_0001.nii.gz"))
    ref = sitk.ReadImage(str(run_dir / "results" / "T1" / model / "centers" / "NYU" / "ensemble_masks" / "NYU_0001.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))


@pytest.mark.parametrize("change", [{"mirroring": True}, {"step_size": 0.8}, {"device": "cpu"}])
def test_inference_settings_repredict_without_training(run_dir, tmp_path, change):
    """Any inference.* setting re-runs every prediction of the modality (out-of-fold, external,
    held-out-center), their evaluation and the aggregates, and never a training job."""
    import yaml

    cfg = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    cfg["inference"] = {**cfg.get("inference", {}), **change}
    path = tmp_path / "inference.yaml"
    path.write_text(yaml.safe_dump(cfg))
    counts = dry_run_counts(run_dir, path)
    expected = {"predict_oof": FOLDS * len(MODELS), "collect_cv_masks": 3 * len(MODELS),
                "predict_external": len(MODELS), "predict_loco": 3, "evaluate_center": 4 * len(MODELS),
                "evaluate_loco": 3, "loco_table": 1}
    if "device" not in change:  # bundles record the inference defaults they were evaluated with
        expected["export_bundle"] = len(MODELS)
    assert_only(counts, expected)


# Jobs of one more trainable model in a completed run (rule names as of today; adjust here when rules
# are renamed): its folds, the out-of-fold masks of the 3 training centers, the ensemble on the external
# center, 4 evaluations, its bundle and training-curve figure (no held-out-center model: loco_models). Everything else must be an aggregate.
NEW_MODEL_JOBS = {"train": FOLDS, "predict_oof": FOLDS, "collect_cv_masks": 3, "predict_external": 1,
                  "evaluate_center": 4, "export_bundle": 1, "figure_training": 1, "figure_overlays": 1}


def test_adding_a_model_runs_only_its_own_jobs(run_dir, tmp_path):
    """transunet3d added to a completed run: its training, prediction and evaluation plus the
    aggregates; the other models are not retrained or re-predicted."""
    import yaml

    cfg = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    cfg["models"] = [*cfg["models"], "transunet3d"]
    cfg["model_catalog"]["transunet3d"] = {"network": {"d_model": 16, "heads": 2, "layers": 1, "ff_dim": 16}}
    path = tmp_path / "more_models.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(path), workdir=run_dir, timeout=180)
    assert_only(job_counts(proc.stdout), NEW_MODEL_JOBS)
    outputs = job_outputs(proc.stdout)  # every planned job of the per-model rules writes transunet3d's files
    per_model = [r for r in NEW_MODEL_JOBS if not r.startswith("figure")]
    planned = [out for rule, out in outputs if rule in per_model]
    assert len(planned) == sum(NEW_MODEL_JOBS[r] for r in per_model)
    assert all("/transunet3d/" in out for out in planned), planned


def job_outputs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, output line) of every job a dry run lists ('rule X:' / 'localrule X:' and indented lines)."""
    import re

    jobs, rule = [], None
    for line in dry_run_output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m.group(1)
        elif rule and line.startswith("    output: "):
            jobs.append((rule, line.strip()))
        elif not line.startswith("    "):
            rule = None
    return jobs


def test_released_model_is_a_study_row(run_dir, tmp_path):
    """A model given as published weights (a bundle per modality) gets prediction and evaluation jobs
    on every center (setting `released`) and nothing else. Here the tiny study's own nnunet bundle
    plays the published weights: on the external center it must give exactly nnunet's ensemble."""
    import shutil

    import yaml

    cfg = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    cfg["models"] = [*cfg["models"], "authors"]
    cfg["model_catalog"]["authors"] = {"bundle": {"T1": "results/T1/nnunet/bundle/panseg_T1_nnunet.tar"},
                                       "label": "nnU-Net as released (test stand-in)"}
    path = tmp_path / "released.yaml"
    path.write_text(yaml.safe_dump(cfg))
    counts = dry_run_counts(run_dir, path)
    assert_only(counts, {"predict_released": 4, "evaluate_center": 4, "figure_overlays": 1})
    try:
        snakemake("results/T1/authors/centers/NYU/metrics.tsv", "--cores", "2", f"--configfile={path}",
                  workdir=run_dir, timeout=600)
        ours = pd.read_csv(run_dir / "results/T1/authors/centers/NYU/metrics.tsv", sep="\t", keep_default_na=False)
        ref = pd.read_csv(run_dir / "results/T1/nnunet/centers/NYU/metrics.tsv", sep="\t", keep_default_na=False)
        assert (ours.setting == "released").all() and (ours.model == "authors").all()
        assert "authors_validation" in ours and (ours.authors_validation == "").all()  # a native bundle lists none
        assert np.allclose(ours.dice.astype(float), ref.dice.astype(float))
    finally:
        shutil.rmtree(run_dir / "results" / "T1" / "authors", ignore_errors=True)


def test_prompted_models_plan_prediction_with_the_reference_labels(run_dir, tmp_path):
    """SAM/MedSAM: one prediction job per center whose inputs include the reference labels and the
    checkpoint; no training, bundle or held-out-center job. (Their protocol runs in test_prompted.py:
    no real checkpoint can be downloaded here.)"""
    import yaml

    checkpoint = tmp_path / "sam_vit_b.pth"
    checkpoint.write_bytes(b"placeholder: planned, never loaded")
    cfg = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    cfg["models"] = [*cfg["models"], "medsam"]
    cfg["model_catalog"]["medsam"] = {"prompt": {"checkpoint": str(checkpoint)}}
    path = tmp_path / "prompted.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", f"--configfile={path}", workdir=run_dir, timeout=180)
    assert_only(job_counts(proc.stdout), {"predict_prompted": 4, "evaluate_center": 4, "figure_overlays": 1})
    jobs = [block for block in re.split(r"\n(?=\[\w{3} \w{3})", proc.stdout) if "rule predict_prompted:" in block]
    assert len(jobs) == 4
    for block in jobs:
        center = re.search(r"center=(\w+)", block).group(1)
        assert f"labelsTr/{center}_0001.nii.gz" in block and str(checkpoint) in block
