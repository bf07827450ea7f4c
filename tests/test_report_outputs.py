"""Figures, paper tables and versions.yml from fabricated per-case tables (2-3 models, no workflow run)."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import write_nifti
from test_stats import fabricated
from workflow_scripts import figures, paper_tables, versions
from workflow_scripts.stats import compare_models, volume_table

MODELS = ["pansegnet", "unet2d", "axunet"]


def write_metrics(df, tmp_path):
    paths = []
    for (model, center), g in df.groupby(["model", "center"]):
        p = tmp_path / "metrics" / model / center / "metrics.tsv"
        p.parent.mkdir(parents=True, exist_ok=True)
        g.to_csv(p, sep="\t", index=False)
        paths.append(str(p))
    return paths


def test_metric_figures_files_and_traceable_rows(tmp_path):
    df = fabricated(MODELS)
    df.loc[(df.model == "unet2d") & (df.case == "AHN_0003"), ["hd95_mm", "empty"]] = [np.nan, "both"]
    written = figures.metrics_figures(df, tmp_path / "fig", reference="pansegnet")
    names = {p.name for p in written}
    for stem in figures.METRIC_FIGURES:
        assert {f"{stem}.png", f"{stem}.svg", f"{stem}.tsv"} <= names
        assert (tmp_path / "fig" / f"{stem}.png").stat().st_size > 5000
        assert "SYNTHETIC" in (tmp_path / "fig" / f"{stem}.svg").read_text(encoding="utf-8")  # title says so
    rows = pd.read_csv(tmp_path / "fig" / "dice_hd95_by_center.tsv", sep="\t")
    assert len(rows) == len(df) and set(rows.model) == set(MODELS) and {"case", "center", "dice"} <= set(rows.columns)
    ba = pd.read_csv(tmp_path / "fig" / "bland_altman.tsv", sep="\t")
    g = ba[ba.model == "axunet"]
    assert g.bias_ml.iloc[0] == pytest.approx(g.diff_ml.mean()) and g.loa_high_ml.iloc[0] == pytest.approx(
        g.diff_ml.mean() + 1.96 * g.diff_ml.std(ddof=1))
    assert "HD95" in (tmp_path / "fig" / "dice_hd95_by_model.svg").read_text(encoding="utf-8")


def test_real_data_has_no_synthetic_label(tmp_path):
    df = fabricated(["nnunet"]).assign(data_source="PanSegData")
    figures.metrics_figures(df, tmp_path, reference="nnunet")
    assert "SYNTHETIC" not in (tmp_path / "volume_scatter.svg").read_text(encoding="utf-8")
    assert figures.synthetic_prefix(["synthetic"]) and not figures.synthetic_prefix("osf")


def test_training_figure(tmp_path):
    paths = []
    for fold in range(3):
        p = tmp_path / f"fold_{fold}" / "training_curve.tsv"
        p.parent.mkdir()
        pd.DataFrame(dict(epoch=range(4), train_losses=[1, 0.8, 0.6, 0.5], val_losses=[1.1, 0.9, 0.7, 0.65],
                          mean_fg_dice=[0, 0.3, 0.6, 0.7], ema_fg_dice=[0, 0.03, 0.09, 0.15],
                          lrs=[0.01] * 4)).to_csv(p, sep="\t", index=False)
        paths.append(str(p))
    assert figures.main(["training", "--curves", *paths, "--title", "T1 pansegnet", "--data-source", "synthetic",
                         "--out", str(tmp_path / "curves")]) == 0
    data = pd.read_csv(tmp_path / "curves.tsv", sep="\t")
    assert len(data) == 12 and sorted(data.fold.unique()) == [0, 1, 2]
    assert "SYNTHETIC" in (tmp_path / "curves.svg").read_text(encoding="utf-8")
    bad = tmp_path / "elsewhere" / "training_curve.tsv"
    bad.parent.mkdir()
    bad.write_text("epoch\n1\n")
    assert figures.main(["training", "--curves", str(bad), "--title", "x", "--out", str(tmp_path / "c2")]) == 1


def test_pick_cases():
    df = pd.DataFrame(dict(case=["a", "b", "c", "d"], dice=[0.5, 0.9, 0.1, 0.7]))
    picks = {what: r["case"] for what, r in figures.pick_cases(df)}
    assert picks == {"best": "b", "median": "a", "worst": "c"}  # the lower of the two middle values
    odd = {what: r["case"] for what, r in figures.pick_cases(df.iloc[:3])}
    assert odd == {"best": "b", "median": "a", "worst": "c"}


def test_overlay_figure(tmp_path):
    rng = np.random.default_rng(0)
    zz, yy, xx = np.indices((10, 40, 40))
    rows, images, labels, masks = [], {}, {}, {}
    for k, shift in enumerate((0, 2, 5), 1):
        case = f"AHN_{k:04d}"
        ref = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 64) & (abs(zz - 5) <= 2)
        pred = np.roll(ref, shift, axis=2)
        img = rng.normal(100, 10, ref.shape) + 50 * ref
        spacing = (1.5, 1.5, 3.0)
        images[case] = str(write_nifti(tmp_path / "img" / f"{case}.nii.gz", img.astype(np.float32), spacing,
                                       direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)))
        labels[case] = str(write_nifti(tmp_path / "lab" / f"{case}.nii.gz", ref.astype(np.uint8), spacing,
                                       direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)))
        masks[case] = write_nifti(tmp_path / "pred" / f"{case}.nii.gz", pred.astype(np.uint8), spacing,
                                  direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
        dice = 2 * (ref & pred).sum() / (ref.sum() + pred.sum())
        rows.append(dict(case=case, center="AHN", role="train-cv", model="pansegnet", dice=dice, hd95_mm=shift * 1.5))
    figures.overlay_figure(pd.DataFrame(rows), images, labels, masks, "SYNTHETIC · T1 pansegnet", tmp_path / "ov")
    picked = pd.read_csv(tmp_path / "ov.tsv", sep="\t")
    assert picked.pick.tolist() == ["best", "median", "worst"]
    assert picked.case.tolist() == ["AHN_0001", "AHN_0002", "AHN_0003"] and (picked.slice_lps >= 3).all()
    assert (tmp_path / "ov.png").exists() and (tmp_path / "ov.svg").exists()


def tables_for(models, tmp_path):
    df = fabricated(models)
    ref = models[0]
    agreement = pd.DataFrame([
        dict(case=f"AHN_000{k}", modality="T1", center="AHN", participant_id="p", data_source="synthetic", kind=kind,
             annotation_a="a", annotation_b="b", dice=0.85, vol_a_ml=50, vol_b_ml=52, box_margin_mm=10,
             kappa_volume=0.84, n11_volume=800, n10_volume=100, n01_volume=180, n00_volume=99000,
             kappa_box=0.7, n11_box=800, n10_box=100, n01_box=180, n00_box=2000)
        for k in (1, 2) for kind in ("inter", "intra")])
    return paper_tables.build_tables(df, compare_models(df, ref), volume_table(df), agreement, ref, ["T1"], models)


def test_paper_tables_shape_three_models(tmp_path):
    tables = {t.name: t for t in tables_for(MODELS, tmp_path)}
    assert set(tables) == {"modality_T1", "cross_center", "agreement", "paired_tests", "volume_agreement"}
    m = tables["modality_T1"]
    assert m.data.model.tolist() == MODELS and m.data.is_reference.tolist() == [True, False, False]
    assert list(m.display.columns[:9]) == ["Model", "n", "Dice (%)", "HD95 (mm)", "Precision (%)", "Recall (%)",
                                           "Volume r²", "p Dice (Holm)", "p HD95 (Holm)"]
    assert m.display["p Dice (Holm)"].iloc[0] == "reference" and m.display["p Dice (Holm)"].iloc[1] == "< 0.001"
    assert " ± " in m.display["Dice (%)"].iloc[0] and m.data.n.tolist() == [18, 18, 18]
    assert any("Holm-corrected across the 4 comparisons" in n for n in m.notes)
    assert any("squared Pearson" in n for n in m.notes)
    cc = tables["cross_center"]
    assert cc.data.center.tolist() == ["AHN", "MCF", "NYU"] and cc.data.role.tolist() == ["train-cv", "train-cv",
                                                                                           "external"]
    for model in MODELS:
        assert {f"{model}_n", f"{model}_dice_mean", f"{model}_hd95_sd"} <= set(cc.data.columns)
    assert "unet2d_p_dice_holm" in cc.data and "pansegnet_p_dice_holm" not in cc.data
    ag = tables["agreement"]
    assert len(ag.data) == 4 and set(ag.data.region) == {"volume", "box"}
    assert ag.data.kappa_pooled.notna().all() and (ag.data.rater_dice_mean == 0.85).all()
    assert len(tables["paired_tests"].data) == 4 + 12
    assert "R² (identity)" in tables["volume_agreement"].display.columns

    for t in tables.values():
        paper_tables.write_outputs(t, tmp_path, "test-study")
    csv = pd.read_csv(tmp_path / "modality_T1.csv")
    assert len(csv) == 3 and {"dice_mean", "dice_sd", "hd95_mean", "vol_r2_pearson", "p_dice_holm"} <= set(csv)
    md = (tmp_path / "modality_T1.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in md and md.count("\n| ") == 4  # header + 3 models
    tex = (tmp_path / "modality_T1.tex").read_text(encoding="utf-8")
    assert "\\toprule" in tex and "$\\pm$" in tex and "Dice (\\%)" in tex and "\\caption{SYNTHETIC" in tex
    assert "<table" in (tmp_path / "agreement.html").read_text(encoding="utf-8")


def test_paper_tables_two_models_and_one_model(tmp_path):
    two = {t.name: t for t in tables_for(["pansegnet", "unet2d"], tmp_path)}
    assert len(two["modality_T1"].data) == 2 and len(two["paired_tests"].data) == 2 + 3 * 2
    one = {t.name: t for t in tables_for(["nnunet"], tmp_path)}
    assert one["paired_tests"].data.empty and one["paired_tests"].display.empty
    assert any("Only one model" in n for n in one["paired_tests"].notes)
    assert any("Only one model" in n for n in one["modality_T1"].notes)
    paper_tables.write_outputs(one["paired_tests"], tmp_path, "s")
    assert "Only one model" in (tmp_path / "paired_tests.md").read_text(encoding="utf-8")


def test_paper_tables_command(tmp_path):
    df = fabricated(["pansegnet", "unet2d"])
    metrics = write_metrics(df, tmp_path)
    comp, vol = tmp_path / "c.tsv", tmp_path / "v.tsv"
    compare_models(df, "pansegnet").to_csv(comp, sep="\t", index=False)
    volume_table(df).to_csv(vol, sep="\t", index=False)
    from workflow_scripts.agreement import COLUMNS

    agr = tmp_path / "a.tsv"
    pd.DataFrame(columns=COLUMNS).to_csv(agr, sep="\t", index=False)
    out = tmp_path / "tables"
    assert paper_tables.main(["--metrics", *metrics, "--comparisons", str(comp), "--volume", str(vol), "--agreement",
                              str(agr), "--reference", "pansegnet", "--models", "pansegnet", "unet2d",
                              "--modalities", "T1", "--study", "s", "--out-dir", str(out)]) == 0
    for name in ["modality_T1", "cross_center", "agreement", "paired_tests", "volume_agreement"]:
        for ext in paper_tables.FORMATS:
            assert (out / f"{name}.{ext}").exists(), f"{name}.{ext}"
    assert "No case has a second annotation" in (out / "agreement.md").read_text(encoding="utf-8")
    pd.DataFrame({"modality": ["T1"]}).to_csv(comp, sep="\t", index=False)  # a stale or foreign table
    assert paper_tables.main(["--metrics", *metrics, "--comparisons", str(comp), "--reference", "pansegnet",
                              "--modalities", "T1", "--out-dir", str(out)]) == 1


def test_tex_escape():
    assert paper_tables.tex_escape("Dice (%) a_b ± κ r²") == r"Dice (\%) a\_b $\pm$ $\kappa$ r$^2$"
    assert paper_tables.tex_escape("2|P∩R|") == r"2$|$P$\cap$R$|$"


def test_versions(tmp_path, monkeypatch):
    cfg = {"study": "x", "models": ["a", "b"], "nested": {"k": 1, "j": [1, 2]}}
    reordered = json.loads(json.dumps({"nested": {"j": [1, 2], "k": 1}, "models": ["a", "b"], "study": "x"}))
    assert versions.config_sha256(cfg) == versions.config_sha256(reordered)
    assert versions.config_sha256(cfg) != versions.config_sha256({**cfg, "study": "y"})
    out = tmp_path / "versions.yml"
    assert versions.main(["--config-json", json.dumps(cfg), "--repo", str(tmp_path), "--out", str(out),
                          "--html", str(tmp_path / "v.html"), "--no-torch"]) == 0
    info = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert info["packages"]["numpy"] == np.__version__ and info["packages"]["scipy"]
    assert info["config"] == cfg and len(info["config_sha256"]) == 64
    assert info["git"]["commit"].startswith("unknown")  # tmp_path is not a git checkout
    assert info["python"].startswith("3.")
    from helpers import REPO

    assert len(versions.git_info(REPO)["commit"]) == 40
    assert "config_sha256" in (tmp_path / "v.html").read_text(encoding="utf-8")
    assert versions.main(["--config-json", "{not json", "--repo", ".", "--out", str(out)]) == 1


def test_cv_name_comes_from_the_setting_column():
    """Tables name the CV by the fold count the masks were made with, not a fixed '5-fold'."""
    rows = pd.DataFrame({"setting": ["3-fold-cv", "3-fold-cv", "external"]})
    assert paper_tables.cv_name(rows) == "3-fold CV"
    assert paper_tables.cv_name(pd.DataFrame({"setting": ["5-fold-cv", "external"]})) == "5-fold CV"
    assert paper_tables.cv_name(pd.DataFrame({"case": ["a"]})) == "CV"
