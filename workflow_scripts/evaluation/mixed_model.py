"""Center effects modelled: a linear mixed model per modality x setting x metric (statsmodels MixedLM).

    metric ~ model  (treatment coding, the reference model as baseline)
             + center (random intercept: the group)
             + participant within center (variance component)
             + residual

fitted by REML on the scans every model of the setting has (identical scans). Each non-reference
model's row gives its effect vs the reference with a 95 % Wald CI and p, the variances of center,
participant and residual and the share of variance between centers = center / (center +
participant + residual). With one center in a setting (e.g. CT: MSD cross-validation, NIH external)
the center variance is not estimable: the term is dropped (participant becomes the group) and the
note says so. A fit that does not converge says so in ``converged`` and ``note``. HD95 is modelled
on scans where no model's prediction failed (as in the paired tests).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from workflow_scripts.evaluation.settings import order_settings

COLUMNS = ["modality", "setting", "metric", "model", "reference", "effect", "ci_low", "ci_high", "p", "center_var",
           "participant_var", "residual_var", "center_share", "converged", "n_scans", "n_participants", "n_centers",
           "formula", "note"]
FORMULA = "{metric} ~ C(model, Treatment('{reference}')) + (1 | center) + (1 | center:participant)"
FORMULA_ONE_CENTER = "{metric} ~ C(model, Treatment('{reference}')) + (1 | participant)"


def _fit(md, methods):
    """REML fit with the first of `methods` that converges. Returns (result, notes)."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    notes, result = [], None
    for method in methods:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = md.fit(reml=True, method=method, maxiter=2000)
            except (np.linalg.LinAlgError, ValueError) as exc:
                notes.append(f"{method} failed: {exc}")
                result = None
                continue
        boundary = any(issubclass(w.category, ConvergenceWarning) and "boundary" in str(w.message) for w in caught)
        if result.converged and np.all(np.isfinite(result.params)):
            if boundary:
                notes.append("a variance estimate lies on the boundary (0)")
            if method != methods[0]:
                notes.append(f"fitted with {method} ({methods[0]} did not converge)")
            return result, notes
    return result, notes + ["did not converge"]


def fit_mixed_model(rows: pd.DataFrame, metric: str, reference: str) -> list[dict]:
    """One row per non-reference model: effect vs `reference` and the variance components."""
    import statsmodels.formula.api as smf

    data = pd.DataFrame({"y": rows[metric].astype(float).to_numpy(), "model": rows.model.astype(str).to_numpy(),
                         "center": rows.center.astype(str).to_numpy(),
                         "participant": (rows.center.astype(str) + "/" + rows.participant_id.astype(str)).to_numpy()})
    data = data.sort_values(["center", "participant", "model"], kind="stable").reset_index(drop=True)
    models = sorted(set(data.model) - {reference})
    n_centers = data.center.nunique()
    base = dict(n_scans=int(len(data) / max(data.model.nunique(), 1)), n_participants=int(data.participant.nunique()),
                n_centers=int(n_centers))
    fixed = f"y ~ C(model, Treatment({reference!r}))"
    notes = []
    if n_centers >= 2:
        md = smf.mixedlm(fixed, data, groups="center", re_formula="1",
                         vc_formula={"participant": "0 + C(participant)"})
        formula = FORMULA.format(metric=metric, reference=reference)
    else:
        md = smf.mixedlm(fixed, data, groups="participant")
        formula = FORMULA_ONE_CENTER.format(metric=metric, reference=reference)
        notes.append("center variance not estimable (1 center): center term dropped, participant is the group")
    # Optimisers measured on study-sized tables (benchmarks/bench_stats.py): with center groups and a
    # participant variance component Powell converges 3-6x faster than the gradient methods to the same
    # estimates; with participant groups (one center) BFGS is fastest and L-BFGS hits singular matrices.
    result, fit_notes = _fit(md, ("powell", "lbfgs", "bfgs") if n_centers >= 2 else ("bfgs", "powell", "lbfgs"))
    notes += fit_notes
    converged = result is not None and "did not converge" not in fit_notes
    if result is None:
        return [dict(model=m, reference=reference, effect=np.nan, ci_low=np.nan, ci_high=np.nan, p=np.nan,
                     center_var=np.nan, participant_var=np.nan, residual_var=np.nan, center_share=np.nan,
                     converged=False, formula=formula, note="; ".join(notes), **base) for m in models]
    residual = float(result.scale)
    if n_centers >= 2:
        center_var = float(np.asarray(result.cov_re)[0, 0])
        participant_var = float(np.asarray(result.vcomp)[0])
    else:
        center_var, participant_var = np.nan, float(np.asarray(result.cov_re)[0, 0])
    total = np.nansum([center_var, participant_var, residual])
    ci = result.conf_int(0.05)
    out = []
    for m in models:
        name = f"C(model, Treatment({reference!r}))[T.{m}]"
        out.append(dict(model=m, reference=reference, effect=float(result.params[name]),
                        ci_low=float(ci.loc[name, 0]), ci_high=float(ci.loc[name, 1]),
                        p=float(result.pvalues[name]), center_var=center_var, participant_var=participant_var,
                        residual_var=residual, center_share=center_var / total if n_centers >= 2 and total > 0
                        else np.nan, converged=bool(converged), formula=formula, note="; ".join(notes), **base))
    return out


def mixed_models(per_case: pd.DataFrame, opts) -> pd.DataFrame:
    """Every modality x setting with at least two models, for Dice, NSD and HD95 (non-failed scans)."""
    from workflow_scripts.evaluation.stats import COMPARED_METRICS, DISTANCE_METRICS, failed

    rows = []
    for modality, g in per_case.groupby("modality", sort=True):
        for setting in order_settings(g.setting):
            gs = g[g.setting == setting]
            models = sorted(set(gs.model))
            if len(models) < 2:
                continue
            reference = opts.reference if opts.reference in models else next(
                (m for m in opts.models if m in models), models[0])
            # Identical scans: cases every model of the setting has.
            common = set.intersection(*(set(gs.case[gs.model == m]) for m in models))
            gs = gs[gs.case.isin(common)]
            for metric in COMPARED_METRICS:
                keep = gs[metric].notna()
                if metric in DISTANCE_METRICS:
                    bad_cases = set(gs.case[failed(gs, opts.failure_dice)])
                    keep &= ~gs.case.isin(bad_cases)
                defined = gs[keep]
                complete = defined.groupby("case").model.nunique() == len(models)
                use = defined[defined.case.isin(complete.index[complete])]
                if use.case.nunique() >= max(opts.min_pairs, 3) and np.ptp(use[metric].astype(float)) == 0:
                    rows += [dict(modality=modality, setting=setting, metric=metric, model=m, reference=reference,
                                  converged=False, n_scans=int(use.case.nunique()),
                                  note="every value equal: no model") for m in models if m != reference]
                    continue
                if use.case.nunique() < max(opts.min_pairs, 3):
                    what = " without a failed prediction of any model" if metric in DISTANCE_METRICS else ""
                    rows += [dict(modality=modality, setting=setting, metric=metric, model=m, reference=reference,
                                  converged=False, n_scans=int(use.case.nunique()), note=f"fewer than "
                                  f"{max(opts.min_pairs, 3)} scans{what}: no model") for m in models if m != reference]
                    continue
                for r in fit_mixed_model(use, metric, reference):
                    rows.append(dict(modality=modality, setting=setting, metric=metric, **r))
    return pd.DataFrame(rows, columns=COLUMNS)
