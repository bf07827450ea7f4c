"""Folds: grouped by participant, balanced across centers, identical for identical inputs."""

import pandas as pd
import pytest

from workflow_scripts.data.splits import check_grouping, make_folds, to_nnunet_splits


def cases(n_participants=30, centers=("A", "B", "C")):
    rows = []
    for p in range(n_participants):
        center = centers[p % len(centers)]
        for visit in range(1 + (p % 4 == 0)):  # every 4th participant has two scans
            rows.append(dict(case_id=f"{center}_{p:03d}{visit}", participant_id=f"P{p}", center=center))
    return pd.DataFrame(rows)


def test_grouped_by_participant_and_complete():
    folds = make_folds(cases(), 5, 12345)
    check_grouping(folds)
    assert sorted(folds.fold.unique()) == [0, 1, 2, 3, 4]
    splits = to_nnunet_splits(folds)
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
        assert len(s["train"]) + len(s["val"]) == len(folds)
    assert sorted(sum((s["val"] for s in splits), [])) == sorted(folds.case_id)


def test_stable_and_order_independent():
    df = cases()
    a = make_folds(df, 5, 1)
    b = make_folds(df.sample(frac=1, random_state=3), 5, 1)
    assert a.equals(b)


def test_centers_spread_over_folds():
    folds = make_folds(cases(60), 5, 7)
    per = folds.groupby(["fold", "center"]).size().unstack()
    assert (per > 0).all().all()


def test_leak_detected():
    bad = pd.DataFrame(dict(case_id=["a", "b"], participant_id=["P", "P"], center=["A", "A"], fold=[0, 1]))
    with pytest.raises(AssertionError, match="participants split"):
        check_grouping(bad)


def test_too_few_participants():
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        make_folds(cases(3), 5, 1)


def test_lost_center_stratification_is_said(caplog):
    """A center with fewer participants than folds switches stratification off: the log and the table say so."""
    assert (make_folds(cases(60), 5, 7).stratified_by == "center").all()
    df = pd.concat([cases(30), pd.DataFrame(dict(case_id=["D_0001", "D_0002"], participant_id=["PD1", "PD2"],
                                                 center=["D", "D"]))])
    with caplog.at_level("WARNING"):
        folds = make_folds(df, 5, 7)
    assert (folds.stratified_by == "none: D has 2 participants (< 5 folds)").all()
    assert "NOT stratified by center" in caplog.text and "D has 2 participants" in caplog.text
    check_grouping(folds)
