"""MixedLM per setting against closed-form estimates on a balanced design."""

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.evaluation.mixed_model import fit_mixed_model


def balanced(c=4, p=5, m=3, seed=3):
    """c centers x p participants per center x m models, one scan per participant (each model predicts it)."""
    rng = np.random.default_rng(seed)
    rows = []
    center_effect = rng.normal(0, 1.0, c)
    for i in range(c):
        for j in range(p):
            person = rng.normal(0, 1.0)
            for k in range(m):
                rows.append(dict(center=f"C{i}", participant_id=f"P{j}", model=f"m{k}", case=f"C{i}_{j}",
                                 dice=5 + 0.5 * k + center_effect[i] + person + rng.normal(0, 1.0)))
    return pd.DataFrame(rows)


def anova_estimates(df, c, p, m):
    """Closed form for the balanced nested design y = model + center + participant(center) + e: REML equals
    the ANOVA estimates (expected mean squares) when they are positive; model effects = differences of means."""
    y = df.sort_values(["center", "participant_id", "model"]).dice.to_numpy().reshape(c, p, m)
    g = y.mean()
    ss_c = m * p * ((y.mean((1, 2)) - g) ** 2).sum()
    ss_p = m * ((y.mean(2) - y.mean((1, 2))[:, None]) ** 2).sum()
    ss_m = c * p * ((y.mean((0, 1)) - g) ** 2).sum()
    ss_e = ((y - g) ** 2).sum() - ss_c - ss_p - ss_m
    ms_c, ms_p, ms_e = ss_c / (c - 1), ss_p / (c * (p - 1)), ss_e / ((m - 1) * (c * p - 1))
    means = y.mean((0, 1))
    return dict(center=(ms_c - ms_p) / (p * m), participant=(ms_p - ms_e) / m, residual=ms_e,
                effects=means[1:] - means[0], se=np.sqrt(2 * ms_e / (c * p)))


def test_balanced_design_matches_closed_form():
    c, p, m = 4, 5, 3
    df = balanced(c, p, m)
    exp = anova_estimates(df, c, p, m)
    assert exp["center"] > 0 and exp["participant"] > 0
    rows = {r["model"]: r for r in fit_mixed_model(df, "dice", "m0")}
    assert set(rows) == {"m1", "m2"}
    for k, model in enumerate(["m1", "m2"]):
        r = rows[model]
        assert r["converged"] and r["n_centers"] == 4 and r["n_participants"] == 20 and r["n_scans"] == 20
        assert r["effect"] == pytest.approx(exp["effects"][k], abs=1e-6)
        assert r["ci_low"] == pytest.approx(exp["effects"][k] - 1.959963984540054 * exp["se"], abs=1e-6)
        assert r["center_var"] == pytest.approx(exp["center"], rel=1e-6)
        assert r["participant_var"] == pytest.approx(exp["participant"], rel=1e-6)
        assert r["residual_var"] == pytest.approx(exp["residual"], rel=1e-6)
        total = exp["center"] + exp["participant"] + exp["residual"]
        assert r["center_share"] == pytest.approx(exp["center"] / total, rel=1e-5)
        assert "(1 | center)" in r["formula"]


def test_one_center_drops_the_center_term():
    df = balanced(c=1, p=12, m=2)
    (r,) = fit_mixed_model(df, "dice", "m0")
    assert r["converged"] and np.isnan(r["center_var"]) and np.isnan(r["center_share"])
    assert "not estimable (1 center)" in r["note"] and r["participant_var"] >= 0
    # One center: participant groups, model effect = difference of the model means (balanced).
    means = df.groupby("model").dice.mean()
    assert r["effect"] == pytest.approx(means["m1"] - means["m0"], abs=1e-6)
