"""The stratified cluster bootstrap against a hand-computed resampling distribution."""

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.evaluation.bootstrap import ClusterBootstrap, cluster_mean_ci, mean_ci, percentile_ci, stratified_counts

# Center A: participant a1 with two scans (1, 3), a2 with one (5); center B: b1 (10), b2 (20).
TINY = pd.DataFrame({"participant": ["a1", "a1", "a2", "b1", "b2"], "center": ["A", "A", "A", "B", "B"],
                     "value": [1.0, 3.0, 5.0, 10.0, 20.0]})


def exact_scan_mean_distribution():
    """By hand: each center draws 2 of its 2 participants with replacement, so the counts are (2,0),
    (1,1), (0,2) with probabilities 1/4, 1/2, 1/4; a drawn participant brings all its scans.
    A: (2,0) sum 8 over 4 scans, (1,1) 9 over 3, (0,2) 10 over 2; B: 20, 30, 40 over 2 scans."""
    a = [(8, 4, 0.25), (9, 3, 0.5), (10, 2, 0.25)]
    b = [(20, 2, 0.25), (30, 2, 0.5), (40, 2, 0.25)]
    dist = {}
    for sa, na, pa in a:
        for sb, nb, pb in b:
            v = round((sa + sb) / (na + nb), 10)
            dist[v] = dist.get(v, 0) + pa * pb
    return dict(sorted(dist.items()))


def test_counts_keep_strata_sizes():
    rng = np.random.default_rng(0)
    counts = stratified_counts(np.array(["A", "A", "A", "B", "B"]), 1000, rng)
    assert counts.shape == (1000, 5)
    assert (counts[:, :3].sum(1) == 3).all() and (counts[:, 3:].sum(1) == 2).all()  # never across centers
    assert counts.min() >= 0 and counts[:, :3].max() == 3


def test_scan_mean_resampling_matches_hand_computed_distribution():
    boot = ClusterBootstrap(TINY.participant.to_numpy(), TINY.center.to_numpy(), n_boot=40000, seed=1)
    assert list(boot.ids) == ["a1", "a2", "b1", "b2"] and boot.n_clusters == 4
    sums = boot.resampled_sums(np.column_stack([TINY.value, np.ones(len(TINY))]))
    means = np.round(sums[:, 0] / sums[:, 1], 10)
    exact = exact_scan_mean_distribution()
    # 9 possible values: 4.667, 5.8, 6.333, 7.5, 7.8, 8, 9.8, 10, 12.5 (e.g. 7.8 = (9 + 30) / 5, p = 1/4).
    assert set(np.unique(means)) == set(exact)
    for value, p in exact.items():
        assert np.mean(means == value) == pytest.approx(p, abs=0.01), value
    # Exact 2.5 % and 97.5 % quantiles: P(4.667) = 1/16 > 0.025 and P(<= 10) = 15/16 < 0.975.
    lo, hi = mean_ci(boot, TINY.value.to_numpy())
    assert lo == pytest.approx(28 / 6) and hi == pytest.approx(12.5)


def test_participant_means_resampled_within_centers():
    boot = ClusterBootstrap(TINY.participant.to_numpy(), TINY.center.to_numpy(), n_boot=40000, seed=2)
    s = boot.cluster_sums(np.column_stack([TINY.value, np.ones(len(TINY))]))
    per_participant = s[:, 0] / s[:, 1]
    assert per_participant.tolist() == [2.0, 5.0, 10.0, 20.0]
    # Mean of 4 drawn participant means: A sums 4, 7, 10 (p 1/4, 1/2, 1/4), B 20, 30, 40; min 24/4, max 50/4.
    lo, hi = cluster_mean_ci(boot, per_participant)
    assert lo == pytest.approx(6.0) and hi == pytest.approx(12.5)


def test_deterministic_and_order_independent():
    a = ClusterBootstrap(TINY.participant.to_numpy(), TINY.center.to_numpy(), 500, seed=7)
    shuffled = TINY.sample(frac=1, random_state=3)
    b = ClusterBootstrap(shuffled.participant.to_numpy(), shuffled.center.to_numpy(), 500, seed=7)
    assert mean_ci(a, TINY.value.to_numpy()) == mean_ci(b, shuffled.value.to_numpy())
    c = ClusterBootstrap(TINY.participant.to_numpy(), TINY.center.to_numpy(), 500, seed=8)
    assert not np.array_equal(a.counts, c.counts)


def test_degenerate_inputs():
    one = ClusterBootstrap(np.array(["p"]), np.array(["A"]), 100, seed=0)
    assert np.isnan(mean_ci(one, [1.0])).all()
    none = ClusterBootstrap(TINY.participant.to_numpy(), TINY.center.to_numpy(), 0, seed=0)
    assert np.isnan(mean_ci(none, TINY.value.to_numpy())).all()
    assert np.isnan(percentile_ci([np.nan, 1.0, np.inf])).all()  # one finite resample: no interval
    lo, hi = percentile_ci([1.0, 2.0, np.nan, 3.0])
    assert lo == pytest.approx(1.05) and hi == pytest.approx(2.95)
