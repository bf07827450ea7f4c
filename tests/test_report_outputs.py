"""Figures, paper tables and versions.yml from fabricated per-case tables (2-3 models, no workflow run)."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import write_nifti
from test_stats import fabricated
from workflow_scripts.reporting import figures
from workflow_scripts.reporting import loco_tables as loco
from workflow_scripts.reporting import paper_tables
from workflow_scripts.evaluation import stats
from workflow_scripts.evaluation import summary_tables as tables
from workflow_scripts.reporting import versions

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
    assert set(rows.setting) == {"cv", "external"}
    ba = pd.read_csv(tmp_path / "fig" / "bland_altman.tsv", sep="\t")
    g = ba[(ba.model == "axunet") & (ba.setting == "external")]  # one panel per setting x model
    # The TSV holds 6 significant digits.
    assert g.bias_ml.iloc[0] == pytest.approx(g.diff_ml.mean(), rel=1e-4) and g.loa_high_ml.iloc[0] == pytest.approx(
        g.diff_ml.mean() + 1.96 * g.diff_ml.std(ddof=1), rel=1e-4)
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


AGREEMENT = pd.DataFrame([
    dict(case=f"AHN_000{k}", modality="T1", center="AHN", participant_id=f"AHN-P{k}", data_source="synthetic",
         kind=kind, annotation_a="a", annotation_b="b", dice=0.85 + 0.01 * k, vol_a_ml=50, vol_b_ml=52,
         box_margin_mm=10, kappa_volume=0.84, n11_volume=800, n10_volume=100 * k, n01_volume=180,
         n00_volume=99000, kappa_box=0.7, n11_box=800, n10_box=100 * k, n01_box=180, n00_box=2000)
    for k in (1, 2, 3) for kind in ("inter", "intra")])


def tables_for(models, loco_models=(), extra=(), n_boot=200):
    df = fabricated(models, loco_models=loco_models, extra=extra)
    ref = models[0]
    opts = stats.Options(reference=ref, models=list(models), n_boot=n_boot)
    out = stats.run_all(df, opts)
    context = paper_tables.context_for(df, ref, "participant", list(models), n_boot)
    return {t.name: t for t in paper_tables.build_tables(df, out, AGREEMENT, context, ["T1"])}, out, context


def test_paper_tables_per_setting_three_models(tmp_path):
    tables, out, _ = tables_for(MODELS)
    assert set(tables) == {"modality_T1", "cross_center", "agreement", "paired_tests", "cross_setting", "failures",
                           "mixed_model", "volume_agreement"}
    m = tables["modality_T1"]
    # A row per setting x model (never pooled), then the paper's published row.
    assert list(zip(m.data.setting, m.data.model)) == [("cv", "pansegnet"), ("cv", "unet2d"), ("cv", "axunet"),
                                                       ("external", "pansegnet"), ("external", "unet2d"),
                                                       ("external", "axunet"), ("published", "pansegnet")]
    assert m.data.n_scans.tolist()[:6] == [12, 12, 12, 6, 6, 6] and m.data.n_participants.tolist()[:3] == [8, 8, 8]
    assert m.data.dice_mean.iloc[-1] == 0.85 and m.data.vol_r2_pearson.iloc[-1] == 0.84  # docs/facts.md §1, T1
    assert list(m.display.columns) == ["Setting", "Model", "n (part. / scans)", "Dice (%)", "NSD (%)", "HD95 (mm)*",
                                       "Failures", "Volume r²", "Volume ICC", "vs", "Δ Dice (%)",
                                       "p Dice t / W (Holm)", "p HD95 t / W (Holm)"]
    assert m.display["n (part. / scans)"].iloc[0] == "8 / 12" and m.display["vs"].iloc[0] == "reference"
    assert m.display["Model"].iloc[-1] == "PanSegNet, as published"
    assert " ± " in m.display["Dice (%)"].iloc[0] and "[" in m.display["Dice (%)"].iloc[0]  # mean ± sd [CI]
    unet = m.data[(m.data.setting == "cv") & (m.data.model == "unet2d")].iloc[0]
    assert unet.dice_ci_low < unet.dice_mean_diff < unet.dice_ci_high < 0 and unet.dice_p_t_holm < 0.05
    assert any("T1/cv/participant/all centers" in n for n in m.notes)
    assert any("Published row" in n for n in m.notes) and not any("WARNING" in n for n in m.notes)
    cc = tables["cross_center"]
    assert list(zip(cc.data.setting, cc.data.center)) == [("cv", "AHN"), ("cv", "MCF"), ("external", "NYU")]
    for model in MODELS:
        assert {f"{model}_n", f"{model}_n_participants", f"{model}_dice_mean", f"{model}_hd95_sd"} <= set(cc.data)
    assert "unet2d_p_dice_holm" in cc.data and "pansegnet_p_dice_holm" not in cc.data
    assert any("<modality>/<setting>/participant/per center" in n for n in cc.notes)  # the family, not the table
    ag = tables["agreement"]
    assert len(ag.data) == 4 and set(ag.data.region) == {"volume", "box"}
    assert (ag.data.kappa_pooled_ci_low <= ag.data.kappa_pooled).all() and ag.data.kappa_ci_low.notna().all()
    assert len(tables["paired_tests"].data) == len(out["comparisons"]) == 2 * 2 * 3 * 5
    assert tables["cross_setting"].data.empty and "No comparison" in tables["cross_setting"].notes[0]
    mm = tables["mixed_model"]
    assert set(mm.data.setting) == {"cv", "external"} and "Var center" in mm.display
    assert "ICC(A,1) [CI]" in tables["volume_agreement"].display.columns
    for t in tables.values():
        paper_tables.write_outputs(t, tmp_path, "test-study")
    csv = pd.read_csv(tmp_path / "modality_T1.csv")
    assert len(csv) == 7 and {"dice_mean", "dice_ci_low", "nsd_mean", "vol_icc", "dice_p_wilcoxon_holm"} <= set(csv)
    md = (tmp_path / "modality_T1.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in md and md.count("\n| ") == 8  # header + 7 rows
    tex = (tmp_path / "modality_T1.tex").read_text(encoding="utf-8")
    assert "\\toprule" in tex and "$\\pm$" in tex and "Dice (\\%)" in tex and "\\caption{SYNTHETIC" in tex
    assert "<table" in (tmp_path / "agreement.html").read_text(encoding="utf-8")


def test_cross_setting_released_prompted_and_loco_tables(tmp_path):
    extra = [("released_v1", "released"), ("sam", "prompted")]
    tables, out, context = tables_for(["pansegnet", "unet2d"], loco_models=("pansegnet",), extra=extra)
    m = tables["modality_T1"].data
    assert ["cv", "cv", "external", "external", "loco", "released", "prompted", "published"] == m.setting.tolist()
    rel = m[m.setting == "released"].iloc[0]
    assert rel.compared_with == "pansegnet (cv)" and pd.notna(rel.dice_mean_diff)
    cs = tables["cross_setting"]
    assert {("loco", "cv"), ("released", "cv"), ("released", "external"), ("prompted", "cv"),
            ("prompted", "external")} == set(zip(cs.data.setting, cs.data.reference_setting))
    assert "loco vs cv" in set(cs.display.Setting)
    lt = loco.loco_table(out["descriptives"], out["cross_setting"], context)
    assert lt.data.center.tolist() == ["AHN", "MCF", "all"] and set(lt.data.model) == {"pansegnet"}
    r = lt.data.iloc[-1]
    assert r.dice_n_participants == 8 and r.dice_n_scans == 12 and r.hd95_n_scans == 12  # own n per metric
    assert r.dice_ci_low < r.dice_mean_diff < r.dice_ci_high and r.dice_mean_diff < 0
    assert "Δ Dice (%) [CI]" in lt.display.columns and "5-fold CV" in lt.title
    assert any("T1/loco vs cv/participant/per center" in n for n in lt.notes)


def test_paper_tables_one_model_and_ungrouped_warning(tmp_path):
    one, _, _ = tables_for(["nnunet"])
    assert one["paired_tests"].data.empty and one["paired_tests"].display.empty
    assert any("only one model per setting" in n for n in one["paired_tests"].notes)
    assert any("Only one model" in n for n in one["modality_T1"].notes)
    df = fabricated(["nnunet", "unet2d"])
    df["participant_id"] = df.case  # every scan its own participant
    out = stats.run_all(df, stats.Options(reference="nnunet", models=["nnunet", "unet2d"], n_boot=50))
    context = paper_tables.context_for(df, "nnunet", n_boot=50)
    for t in paper_tables.build_tables(df, out, AGREEMENT.iloc[:0], context, ["T1"]):
        assert t.notes[0].startswith("WARNING: participants are not grouped in T1"), t.name
    assert paper_tables.ungrouped_from_descriptives(out["descriptives"]).startswith("WARNING")


def test_paper_tables_and_loco_commands(tmp_path):
    df = fabricated(["pansegnet", "unet2d"], loco_models=("pansegnet",))
    metrics = write_metrics(df.assign(setting=df.setting.where(df.setting != "loco", "held-out-center")), tmp_path)
    stats_dir = tmp_path / "stats"
    assert stats.main(["--metrics", *metrics, "--reference", "pansegnet", "--n-boot", "100", "--out-dir",
                       str(stats_dir)]) == 0
    from workflow_scripts.evaluation.agreement import COLUMNS

    agr = tmp_path / "a.tsv"
    pd.DataFrame(columns=COLUMNS).to_csv(agr, sep="\t", index=False)
    out = tmp_path / "tables"
    args = ["--metrics", *metrics, "--agreement", str(agr), "--reference", "pansegnet", "--models", "pansegnet",
            "unet2d", "--modalities", "T1", "--n-boot", "100", "--study", "s", "--out-dir", str(out)]
    for name in paper_tables.STATS_COLUMNS:
        args += [f"--{name.replace('_', '-')}", str(stats_dir / f"{name}.tsv")]
    assert paper_tables.main(args) == 0
    for name in ["modality_T1", "cross_center", "agreement", "paired_tests", "cross_setting", "failures",
                 "mixed_model", "volume_agreement"]:
        for ext in paper_tables.FORMATS:
            assert (out / f"{name}.{ext}").exists(), f"{name}.{ext}"
    assert "No case has a second annotation" in (out / "agreement.md").read_text(encoding="utf-8")
    assert loco.main(["--descriptives", str(stats_dir / "descriptives.tsv"), "--cross-setting",
                      str(stats_dir / "cross_setting.tsv"), "--n-boot", "100", "--out-dir", str(out)]) == 0
    assert "5-fold CV" in (out / "loco.md").read_text(encoding="utf-8")
    stale = tmp_path / "stale.tsv"
    pd.DataFrame({"modality": ["T1"]}).to_csv(stale, sep="\t", index=False)  # a foreign table
    assert paper_tables.main(args[:-2] + ["--out-dir", str(out), "--comparisons", str(stale)]) == 1


def test_summary_tables_per_setting():
    df = fabricated(["pansegnet", "unet2d"], loco_models=("pansegnet",))
    summary = tables.summarise(df)
    assert set(summary.setting) == {"cv", "external", "loco"}
    allrows = summary[summary.scope == "all"]
    assert allrows.set_index(["setting", "model"]).n.to_dict() == {
        ("cv", "pansegnet"): 12, ("cv", "unet2d"): 12, ("external", "pansegnet"): 6, ("external", "unet2d"): 6,
        ("loco", "pansegnet"): 12}
    assert (allrows.n_participants < allrows.n).all() and allrows.nsd_mean.notna().all()
    assert "| setting | model |" in tables.to_markdown(summary, "s")


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
