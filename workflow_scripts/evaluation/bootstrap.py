"""Stratified cluster bootstrap: resample participants within centers, percentile intervals.

Scans of one participant are not independent, and centers differ: every interval of the study
statistics comes from resampling *participants* (all their scans together) *within each
center*, n_c participants drawn with replacement from the n_c of center c, so every resample
keeps the design's center sizes. ``scipy.stats.bootstrap`` resamples observations and cannot
keep clusters together within strata, hence this small implementation.

A resample is a vector of counts (how often each participant was drawn). Every statistic here is
a function of per-participant sums (of a value, its square, a product, a count of scans), so a
statistic over ``n_boot`` resamples is one matrix product ``counts @ sums`` followed by
arithmetic on the columns: fast enough for 2,000 resamples of the full study in seconds.

Determinism: the generator of a resample matrix is seeded from the configured seed and a digest
of the participants and centers it draws from, so the same data always get the same resamples,
whatever order the statistics are computed in (byte-identical tables for the same inputs).
The interval is the percentile interval (quantiles ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` of the resampled statistic, numpy's linear interpolation); resamples in
which a statistic is undefined (e.g. zero variance) are left out of the quantiles.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

_CACHE: dict = {}
_CACHE_MAX = 256


def _seed_words(seed: int, clusters, strata) -> list[int]:
    digest = hashlib.sha256()
    for c, s in zip(clusters, strata):
        digest.update(f"{c}\x1f{s}\x1e".encode())
    return [int(seed)] + [int.from_bytes(digest.digest()[i:i + 4], "little") for i in (0, 4, 8, 12)]


def stratified_counts(strata, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_clusters) counts: in every row each stratum's clusters are drawn n_s times with replacement."""
    strata = np.asarray(strata)
    counts = np.zeros((n_boot, strata.size))
    for s in pd.unique(strata):
        members = np.flatnonzero(strata == s)
        draws = rng.integers(0, members.size, size=(n_boot, members.size))
        flat = (draws + np.arange(n_boot)[:, None] * members.size).ravel()
        counts[:, members] = np.bincount(flat, minlength=n_boot * members.size).reshape(n_boot, members.size)
    return counts


@dataclass
class ClusterBootstrap:
    """Resamples of the participants (clusters) of a set of rows, stratified by center.

    ``clusters`` and ``strata`` are given per row (participant id and center of each scan); a
    participant seen in two centers is placed in the first of them (sorted). ``n_boot`` 0 gives no
    intervals (NaN).
    """

    clusters: np.ndarray
    strata: np.ndarray
    n_boot: int
    seed: int
    ids: np.ndarray = field(init=False)
    index: np.ndarray = field(init=False)  # row -> position of its cluster in ids
    counts: np.ndarray = field(init=False)  # (n_boot, n_clusters)

    def __post_init__(self):
        rows = pd.DataFrame({"c": np.asarray(self.clusters, dtype=str), "s": np.asarray(self.strata, dtype=str)})
        first = rows.sort_values(["c", "s"]).drop_duplicates("c")
        self.ids = first.c.to_numpy()
        cluster_strata = first.s.to_numpy()
        self.index = np.searchsorted(self.ids, rows.c.to_numpy())
        key = (tuple(self.ids), tuple(cluster_strata), int(self.n_boot), int(self.seed))
        if key not in _CACHE:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()
            if self.n_boot > 0:
                rng = np.random.default_rng(_seed_words(self.seed, self.ids, cluster_strata))
                _CACHE[key] = stratified_counts(cluster_strata, int(self.n_boot), rng)
            else:
                _CACHE[key] = np.zeros((0, self.ids.size))
        self.counts = _CACHE[key]

    @property
    def n_clusters(self) -> int:
        return int(self.ids.size)

    def cluster_sums(self, values) -> np.ndarray:
        """Per-cluster sums of row values: (n_clusters, q) for (n_rows, q) or (n_rows,) input."""
        v = np.asarray(values, float)
        v2 = v[:, None] if v.ndim == 1 else v  # (n_rows, q); works for zero rows too
        out = np.zeros((self.n_clusters, v2.shape[1]))
        np.add.at(out, self.index, v2)
        return out

    def resampled_sums(self, values) -> np.ndarray:
        """(n_boot, q) sums of row values over each resample (rows of a cluster drawn k times count k times)."""
        return self.counts @ self.cluster_sums(values)

    def resampled_cluster_sums(self, per_cluster) -> np.ndarray:
        """(n_boot, q) sums of per-cluster values (one value per cluster, e.g. a participant mean)."""
        v = np.asarray(per_cluster, float)
        return self.counts @ (v[:, None] if v.ndim == 1 else v)


def percentile_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of resampled statistics; NaN resamples are left out; NaN when none is left."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return np.nan, np.nan
    alpha = 1.0 - confidence
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def mean_ci(boot: ClusterBootstrap, values, confidence: float = 0.95) -> tuple[float, float]:
    """CI of the mean over rows (scans), resampling clusters: ratio of resampled sums to resampled counts."""
    if boot.n_boot == 0 or boot.n_clusters < 2:
        return np.nan, np.nan
    v = np.asarray(values, float)
    s = boot.resampled_sums(np.column_stack([v, np.ones_like(v)]))
    return percentile_ci(s[:, 0] / s[:, 1], confidence)


def cluster_mean_ci(boot: ClusterBootstrap, per_cluster, confidence: float = 0.95) -> tuple[float, float]:
    """CI of the mean of one value per cluster (e.g. participant means), resampling clusters within strata."""
    if boot.n_boot == 0 or boot.n_clusters < 2:
        return np.nan, np.nan
    v = np.asarray(per_cluster, float)
    s = boot.resampled_cluster_sums(np.column_stack([v, np.ones_like(v)]))
    return percentile_ci(s[:, 0] / s[:, 1], confidence)
