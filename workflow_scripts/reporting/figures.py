"""Figures of the study (matplotlib, PNG and SVG), each with the per-case rows it shows.

Every figure ``<stem>`` is written as ``<stem>.png``, ``<stem>.svg`` and ``<stem>.tsv``: the TSV
holds the rows plotted (case id, model, center and the plotted values), so each point, box or
panel traces back to the per-case metrics tables. Titles start with "SYNTHETIC" when the data
source is the synthetic demo.

Subcommands (one job each):
- ``metrics``: one modality's Dice and HD95 box/strip plots per setting and model and per center
  and setting (settings are never pooled), predicted vs reference volume scatter (identity line,
  least-squares line, Pearson r², ICC and identity-line R²) and Bland-Altman plots (bias, limits
  of agreement bias ± 1.96 sd with ddof=1, regression-based limits where the bias is
  proportional), a row of panels per setting;
- ``training``: one modality x model's training curves, one line per fold;
- ``overlays``: image slice with reference and predicted contours for the best, median and
  worst case (by Dice) of one modality x model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_scripts.common.atomic import atomic_path, write_table  # noqa: E402
from workflow_scripts.common.errors import InputError  # noqa: E402
from workflow_scripts.evaluation.stats import read_metrics  # noqa: E402

log = logging.getLogger(__name__)

REF_COLOUR, PRED_COLOUR = "#1b9e77", "#d95f02"  # colour-blind safe pair (Dark2)
MODEL_COLOURS = plt.get_cmap("tab10").colors
DPI = 120
# Stems of the figures each subcommand writes (the Snakemake rules list the same names).
METRIC_FIGURES = ("dice_hd95_by_model", "dice_hd95_by_center", "volume_scatter", "bland_altman")


def synthetic_prefix(sources) -> str:
    """'SYNTHETIC · ' when any of the data sources is synthetic, else ''."""
    values = {str(s).lower() for s in np.atleast_1d(list(sources) if not isinstance(sources, str) else [sources])}
    return "SYNTHETIC · " if any("synthetic" in v for v in values) else ""


def save_figure(fig, stem, data: pd.DataFrame | None = None) -> list[Path]:
    """Write <stem>.png and <stem>.svg (and <stem>.tsv with the plotted rows) atomically."""
    stem = Path(stem)
    written = []
    for ext in ("png", "svg"):
        path = stem.with_name(stem.name + f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=DPI, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else {})
        written.append(path)
    plt.close(fig)
    if data is not None:
        path = stem.with_name(stem.name + ".tsv")
        write_table(data, path, float_format="%.6g")
        written.append(path)
    return written


def _order_models(models, reference=None):
    models = sorted(set(models))
    if reference in models:
        models.remove(reference)
        models.insert(0, reference)
    return models


def _box_strip(ax, groups, positions, colours, width=0.6, seed=0):
    """Box plot (no outlier markers: every case is drawn as a jittered point)."""
    rng = np.random.default_rng(seed)
    data = [np.asarray(g, float) for g in groups]
    keep = [i for i, d in enumerate(data) if d.size]
    if keep:
        bp = ax.boxplot([data[i] for i in keep], positions=[positions[i] for i in keep], widths=width,
                        showfliers=False, patch_artist=True, medianprops=dict(color="black"))
        for patch, i in zip(bp["boxes"], keep):
            patch.set_facecolor(colours[i])
            patch.set_alpha(0.35)
    for d, x, c in zip(data, positions, colours):
        ax.scatter(x + rng.uniform(-width / 4, width / 4, d.size), d, s=14, color=c, edgecolor="black",
                   linewidth=0.4, zorder=3)


def _metric_panels(df, x_key, x_levels, hues, title, tick_labels=None):
    """Two panels (Dice, HD95): a box per x level, split into one box per model when `hues` lists models
    (``hues=[None]``: one box per level, coloured by level)."""
    boxes = len(x_levels) * len(hues)
    if boxes <= 12:  # side by side
        fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.1 * boxes + 2.5), 4.2))
    else:  # many boxes (several settings or centers): one panel above the other
        fig, axes = plt.subplots(2, 1, figsize=(min(24.0, max(8.0, 0.45 * boxes + 2.0)), 8.0))
    width = 0.8 / len(hues)
    notes = []
    for ax, (col, label) in zip(axes, [("dice", "Dice"), ("hd95_mm", "HD95 (mm)")]):
        groups, positions, colours = [], [], []
        for i, level in enumerate(x_levels):
            at_level = df[x_key] == level
            # Boxes of the models that have rows at this level, centred on its tick (colour = model).
            present = [(j, m) for j, m in enumerate(hues) if m is None or (at_level & (df.model == m)).any()]
            for slot, (j, model) in enumerate(present):
                keep = at_level if model is None else at_level & (df.model == model)
                groups.append(df.loc[keep, col].astype(float).dropna())
                positions.append(i + (slot - (len(present) - 1) / 2) * width)
                colours.append(MODEL_COLOURS[(i if model is None else j) % len(MODEL_COLOURS)])
        _box_strip(ax, groups, positions, colours, width=width * 0.9)
        ax.set_xticks(range(len(x_levels)))
        ax.set_xticklabels(tick_labels or x_levels, rotation=30 if len(x_levels) > 5 else 0)
        ax.set_xlim(-0.6, len(x_levels) - 0.4)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        undefined = int(df[col].isna().sum())
        if undefined:
            notes.append(f"{undefined} case(s) without a defined {label} (both masks empty) not drawn")
    axes[0].set_ylim(min(0.0, axes[0].get_ylim()[0]), 1.02)
    if hues != [None]:
        handles = [plt.Rectangle((0, 0), 1, 1, color=MODEL_COLOURS[j % len(MODEL_COLOURS)], alpha=0.6)
                   for j in range(len(hues))]
        axes[1].legend(handles, hues, title="model", fontsize=8, loc="upper right")
    fig.suptitle(title + ("\n" + "; ".join(notes) if notes else ""), fontsize=10)
    fig.tight_layout()
    return fig


def _panel_grid(n_rows, n_cols, width, height):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False)
    return fig, axes


def metrics_figures(per_case: pd.DataFrame, out_dir, reference=None) -> list[Path]:
    """Box/strip, volume scatter and Bland-Altman figures of one modality's per-case metrics, per setting."""
    from workflow_scripts.evaluation.settings import order_settings
    from workflow_scripts.evaluation.stats import Options, regression_limits, volume_agreement

    if per_case.modality.nunique() != 1:
        raise ValueError(f"metrics_figures wants one modality, got {sorted(per_case.modality.unique())}")
    out_dir = Path(out_dir)
    modality = per_case.modality.iloc[0]
    tag = synthetic_prefix(per_case.data_source)
    models = _order_models(per_case.model, reference)
    settings = order_settings(per_case.setting)
    cols = ["case", "model", "setting", "center", "participant_id", "role", "data_source"]
    cols = [c for c in cols if c in per_case]
    written = []

    # Dice and HD95 per setting and model (settings side by side, never pooled).
    n_scans = {s: per_case[per_case.setting == s].case.nunique() for s in settings}
    fig = _metric_panels(per_case, "setting", settings, models,
                         f"{tag}{modality}: Dice and HD95 per setting and model (settings never pooled)",
                         tick_labels=[f"{s}\n(n = {n_scans[s]} scans)" for s in settings])
    written += save_figure(fig, out_dir / "dice_hd95_by_model", per_case[cols + ["dice", "hd95_mm", "empty"]])

    # Per center and setting: training centers (cv, loco) first.
    keyed = per_case.assign(center_setting=per_case.center.astype(str) + "\n(" + per_case.setting.astype(str) + ")")
    levels = sorted(keyed.center_setting.unique(),
                    key=lambda k: (k.split("(")[1] == "external)", k.split("\n")[0], settings.index(k.split("(")[1][:-1])))
    fig = _metric_panels(keyed, "center_setting", levels, models, f"{tag}{modality}: Dice and HD95 per center and setting")
    written += save_figure(fig, out_dir / "dice_hd95_by_center", per_case[cols + ["dice", "hd95_mm", "empty"]])

    # Predicted vs reference volume: a row per setting, a column per model.
    opts = Options(reference=reference or "", n_boot=0)
    # one group and one volume agreement per (setting, model) panel, shared by both figures
    groups = {(s, m): per_case[(per_case.setting == s) & (per_case.model == m)] for s in settings for m in models}
    groups = {k: g for k, g in groups.items() if len(g)}
    agreement = {k: volume_agreement(g, opts) for k, g in groups.items()}

    def panel(axes, s, model):
        ax = axes[settings.index(s), models.index(model)]
        ax.set_axis_on()
        return ax, MODEL_COLOURS[models.index(model) % len(MODEL_COLOURS)], groups[s, model], agreement[s, model]

    fig, axes = _panel_grid(len(settings), len(models), 4.2, 4.2)
    for ax in axes.ravel():
        ax.set_axis_off()
    for s, model in groups:
        ax, colour, g, va = panel(axes, s, model)
        ref, pred = g.vol_ref_ml.astype(float), g.vol_pred_ml.astype(float)
        lim = [0, 1.05 * max(ref.max(), pred.max(), 1e-6)]
        ax.plot(lim, lim, color="grey", lw=1, ls="--", label="identity")
        if np.isfinite(va["slope"]):
            ax.plot(lim, [va["intercept"] + va["slope"] * v for v in lim], color=colour, lw=1,
                    label=f"fit: {va['slope']:.2f}·ref {va['intercept']:+.1f}")
        ax.scatter(ref, pred, s=16, color=colour, edgecolor="black", linewidth=0.4, zorder=3)
        ax.set(xlim=lim, ylim=lim, xlabel="reference volume (mL)", ylabel="predicted volume (mL)", aspect="equal")
        ax.set_title(f"{model}, {s}: r² (Pearson) {va['r2_pearson']:.3f}, ICC {va['icc']:.3f}\n"
                     f"R² (identity line) {va['r2_identity']:.3f}, n = {va['n_scans']}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{tag}{modality}: predicted vs reference pancreas volume, per setting", fontsize=10)
    fig.tight_layout()
    written += save_figure(fig, out_dir / "volume_scatter", per_case[cols + ["vol_ref_ml", "vol_pred_ml"]])

    # Bland-Altman: a row per setting, a column per model; regression-based limits where the bias is proportional.
    fig, axes = _panel_grid(len(settings), len(models), 4.6, 4.0)
    for ax in axes.ravel():
        ax.set_axis_off()
    ba_rows = []
    for s, model in groups:
        ax, colour, g, va = panel(axes, s, model)
        ref, pred = g.vol_ref_ml.astype(float), g.vol_pred_ml.astype(float)
        mean, diff = (ref + pred) / 2, pred - ref
        ax.scatter(mean, diff, s=16, color=colour, edgecolor="black", linewidth=0.4, zorder=3)
        for y, ls, text in [(va["bias_ml"], "-", "bias"), (va["loa_low_ml"], "--", "bias − 1.96 sd"),
                            (va["loa_high_ml"], "--", "bias + 1.96 sd")]:
            if np.isfinite(y):
                ax.axhline(y, color="black", ls=ls, lw=1)
                ax.annotate(f"{text}: {y:.1f}", (1.0, y), xycoords=("axes fraction", "data"), ha="right",
                            va="bottom", fontsize=7)
        proportional = np.isfinite(va["rb_bias_b0"])
        if proportional:
            a = np.linspace(mean.min(), mean.max(), 50)
            line, low, high = regression_limits(va, a)
            ax.plot(a, line, color=colour, lw=1)
            ax.plot(a, low, color=colour, lw=1, ls=":")
            ax.plot(a, high, color=colour, lw=1, ls=":")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(xlabel="mean of predicted and reference volume (mL)", ylabel="predicted − reference (mL)")
        ax.set_title(f"{model}, {s}: bias {va['bias_ml']:.2f} mL, LoA [{va['loa_low_ml']:.1f}, {va['loa_high_ml']:.1f}]"
                     + (f"\nproportional bias (slope {va['prop_bias_slope']:.3f}, p {va['prop_bias_p']:.3g}): "
                        "regression-based limits dotted" if proportional else ""), fontsize=9)
        ba_rows.append(g[cols].assign(mean_ml=mean.values, diff_ml=diff.values, bias_ml=va["bias_ml"],
                                      loa_low_ml=va["loa_low_ml"], loa_high_ml=va["loa_high_ml"],
                                      prop_bias_p=va["prop_bias_p"]))
    fig.suptitle(f"{tag}{modality}: Bland–Altman plot of pancreas volume per setting (sd with ddof=1)", fontsize=10)
    fig.tight_layout()
    written += save_figure(fig, out_dir / "bland_altman", pd.concat(ba_rows, ignore_index=True))
    return written


def training_figure(curves: dict[int, pd.DataFrame], title: str, stem) -> list[Path]:
    """Losses and pseudo-Dice per epoch, one colour per fold."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = []
    for fold, curve in sorted(curves.items()):
        colour = MODEL_COLOURS[fold % len(MODEL_COLOURS)]
        ep = curve["epoch"]
        axes[0].plot(ep, curve["train_losses"], color=colour, label=f"fold {fold} train")
        axes[0].plot(ep, curve["val_losses"], color=colour, ls="--", label=f"fold {fold} validation")
        axes[1].plot(ep, curve["ema_fg_dice"], color=colour, label=f"fold {fold} EMA")
        axes[1].scatter(ep, curve["mean_fg_dice"], color=colour, s=10)
        rows.append(curve.assign(fold=fold))
    axes[0].set(xlabel="epoch", ylabel="loss (as logged by the trainer)",
                title="training (solid) and validation (dashed) loss")
    axes[1].set(xlabel="epoch", ylabel="pseudo Dice (validation patches)", ylim=(-0.02, 1.02),
                title="mean foreground Dice (points) and its EMA (lines)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    data = pd.concat(rows, ignore_index=True) if rows else None
    if data is not None:
        data = data[["fold"] + [c for c in data.columns if c != "fold"]]
    return save_figure(fig, stem, data)


def read_curves(paths) -> dict[int, pd.DataFrame]:
    """{fold: training curve}; the fold comes from the fold_<k> folder holding each file."""
    curves = {}
    for path in paths:
        path = Path(path)
        name = path.parent.name
        if not name.startswith("fold_") or not name[5:].isdigit():
            raise InputError(path, "expected a training_curve.tsv inside a fold_<k> folder")
        try:
            curve = pd.read_csv(path, sep="\t")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise InputError(path, f"cannot be read as a training curve ({exc})") from None
        missing = {"epoch", "train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice"} - set(curve.columns)
        if missing:
            raise InputError(path, f"training curve lacks columns {sorted(missing)}")
        curves[int(name[5:])] = curve
    return curves


def pick_cases(g: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """Best, median and worst case by Dice (ties broken by case id); the median is the lower middle one."""
    s = g.sort_values(["dice", "case"], ascending=[False, True]).reset_index(drop=True)
    return [("best", s.iloc[0]), ("median", s.iloc[len(s) // 2]), ("worst", s.iloc[-1])]


def _slice_views(image_path, ref_path, pred_path, margin_mm=30.0):
    """Axial slice (LPS, radiological view) with the largest reference area, cropped around both masks."""
    import SimpleITK as sitk

    from workflow_scripts.data.image_checks import read_image

    img, ref, pred = (sitk.DICOMOrient(read_image(p), "LPS") for p in (image_path, ref_path, pred_path))
    a_img = sitk.GetArrayFromImage(img).astype(float)
    a_ref, a_pred = sitk.GetArrayFromImage(ref) > 0, sitk.GetArrayFromImage(pred) > 0
    if a_ref.shape != a_img.shape or a_pred.shape != a_img.shape:
        raise InputError(pred_path, f"mask grid differs from image {image_path}")
    area = a_ref.sum((1, 2)) if a_ref.any() else a_pred.sum((1, 2))
    k = int(np.argmax(area))
    sx, sy = img.GetSpacing()[:2]
    union = a_ref[k] | a_pred[k]
    if union.any():
        ys, xs = np.nonzero(union)
        my, mx = int(np.ceil(margin_mm / sy)), int(np.ceil(margin_mm / sx))
        y0, y1 = max(ys.min() - my, 0), min(ys.max() + my + 1, union.shape[0])
        x0, x1 = max(xs.min() - mx, 0), min(xs.max() + mx + 1, union.shape[1])
    else:
        y0, y1, x0, x1 = 0, union.shape[0], 0, union.shape[1]
    crop = (slice(y0, y1), slice(x0, x1))
    return a_img[k][crop], a_ref[k][crop], a_pred[k][crop], (sx, sy), k


def overlay_figure(per_case: pd.DataFrame, images: dict[str, str], labels: dict[str, str], masks: dict[str, Path],
                   title: str, stem) -> list[Path]:
    """Three panels: best, median and worst case (by Dice) with reference and predicted contours."""
    picks = pick_cases(per_case)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    rows = []
    for ax, (what, r) in zip(axes, picks):
        case = r["case"]
        for d, name in ((images, "image"), (labels, "label"), (masks, "predicted mask")):
            if case not in d:
                raise InputError(case, f"no {name} for case {case}")
        img, ref, pred, (sx, sy), k = _slice_views(images[case], labels[case], masks[case])
        lo, hi = np.percentile(img, [1, 99])
        extent = (0, img.shape[1] * sx, img.shape[0] * sy, 0)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
        yy, xx = (np.arange(n) + 0.5 for n in img.shape)
        for m, colour in ((ref, REF_COLOUR), (pred, PRED_COLOUR)):
            if m.any() and not m.all():
                ax.contour(xx * sx, yy * sy, m.astype(float), levels=[0.5], colors=[colour], linewidths=1.4)
        hd = r["hd95_mm"]
        ax.set_title(f"{what}: {case} ({r['center']})\nDice {r['dice']:.3f}, HD95 "
                     f"{'n/a' if pd.isna(hd) else f'{float(hd):.1f} mm'}, axial slice {k}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        rows.append(dict(pick=what, case=case, center=r["center"], role=r["role"], model=r["model"], dice=r["dice"],
                         hd95_mm=hd, slice_lps=k, image=images[case], label=labels[case], mask=str(masks[case])))
    handles = [plt.Line2D([], [], color=REF_COLOUR, lw=2), plt.Line2D([], [], color=PRED_COLOUR, lw=2)]
    fig.legend(handles, ["reference", "prediction"], loc="lower center", ncol=2, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, stem, pd.DataFrame(rows))


def _masks_by_case(mask_dirs) -> dict[str, Path]:
    found = {}
    for d in mask_dirs:
        d = Path(d)
        if not d.is_dir():
            raise InputError(d, "mask folder does not exist")
        for f in d.glob("*.nii.gz"):
            found[f.name[: -len(".nii.gz")]] = f
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description="Study figures (PNG + SVG + the plotted rows as TSV).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("metrics", help="box/strip, volume scatter and Bland-Altman figures of one modality")
    m.add_argument("--metrics", nargs="+", required=True)
    m.add_argument("--reference", default=None)
    m.add_argument("--out-dir", required=True)
    t = sub.add_parser("training", help="training curves of one modality x model, a line per fold")
    t.add_argument("--curves", nargs="+", required=True)
    t.add_argument("--title", required=True)
    t.add_argument("--data-source", default="")
    t.add_argument("--out", required=True, help="output stem (.png, .svg, .tsv are added)")
    o = sub.add_parser("overlays", help="best/median/worst case contours of one modality x model")
    o.add_argument("--metrics", nargs="+", required=True)
    o.add_argument("--cases", nargs="+", required=True, help="manifest tables (image and label columns)")
    o.add_argument("--masks", nargs="+", required=True, help="predicted mask folders")
    o.add_argument("--out", required=True, help="output stem")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.cmd == "metrics":
            written = metrics_figures(read_metrics(args.metrics), args.out_dir, args.reference)
        elif args.cmd == "training":
            title = f"{synthetic_prefix(args.data_source)}{args.title}"
            written = training_figure(read_curves(args.curves), title, args.out)
        else:
            per_case = read_metrics(args.metrics)
            if per_case.model.nunique() != 1 or per_case.modality.nunique() != 1:
                raise InputError(args.metrics[0], "overlays want the metrics of one modality and one model")
            cases = pd.concat([pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False) for f in args.cases])
            title = (f"{synthetic_prefix(per_case.data_source)}{per_case.modality.iloc[0]} "
                     f"{per_case.model.iloc[0]}: best, median and worst case by Dice "
                     f"(of {len(per_case)}; axial slice with the largest reference area)")
            written = overlay_figure(per_case, dict(zip(cases.case_id, cases.image)),
                                     dict(zip(cases.case_id, cases.label)), _masks_by_case(args.masks), title,
                                     args.out)
    except InputError as exc:
        log.error("%s", exc)
        return 1
    for w in written:
        log.info("wrote %s", w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
