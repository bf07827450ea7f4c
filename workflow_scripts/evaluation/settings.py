"""The setting of a per-case row: how the predicted mask was made. One first-class column.

- ``cv``        out-of-fold prediction of a training center (the fold count is in ``n_folds``);
- ``external``  the fold ensemble on a center never trained on (``n_folds`` models averaged);
- ``loco``      a model trained without that center (leave-one-center-out);
- ``released``  published weights (a model that only predicts);
- ``prompted``  a model given the reference's bounding box (SAM/MedSAM).

Tables written before this column had these values (``<k>-fold-cv``, ``held-out-center``) are
migrated on reading (:func:`normalise_settings`), so an older metrics.tsv still reads.
Statistics are computed per setting; a pooled number is labelled "pooled (cv + external)".
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from workflow_scripts.common.errors import InputError

SETTINGS = ("cv", "external", "loco", "released", "prompted")
# Short labels for tables and figures.
SETTING_LABELS = {"cv": "cross-validation (out-of-fold)", "external": "external (fold ensemble)",
                  "loco": "leave-one-center-out", "released": "released weights",
                  "prompted": "prompted (reference box)"}
_OLD_CV = re.compile(r"^(\d+)-fold-cv$")


def migrate_setting(value) -> tuple[str, float]:
    """(setting, n_folds) of a value old or new: '5-fold-cv' -> ('cv', 5); 'held-out-center' -> ('loco', nan)."""
    value = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
    m = _OLD_CV.match(value)
    if m:
        return "cv", float(m.group(1))
    if value == "held-out-center":
        return "loco", np.nan
    return value, np.nan


def normalise_settings(df: pd.DataFrame, source) -> pd.DataFrame:
    """Migrate old setting values, add ``n_folds`` where missing; an unknown or empty setting names the file."""
    if "setting" not in df:
        raise InputError(source, "table lacks the 'setting' column (cv, external, loco, released, prompted)")
    df = df.copy()
    migrated = [migrate_setting(v) for v in df["setting"]]
    df["setting"] = [s for s, _ in migrated]
    old_folds = pd.Series([k for _, k in migrated], index=df.index, dtype=float)
    if "n_folds" in df:
        df["n_folds"] = pd.to_numeric(df["n_folds"], errors="coerce").fillna(old_folds)
    else:
        df.insert(list(df.columns).index("setting") + 1, "n_folds", old_folds)
    bad = sorted(set(df["setting"]) - set(SETTINGS))
    if bad:
        raise InputError(source, f"unknown setting {bad[:3]} (expected one of {', '.join(SETTINGS)})")
    return df


def order_settings(values) -> list[str]:
    """Settings present, in the canonical order (cv, external, loco, released, prompted)."""
    present = set(values)
    return [s for s in SETTINGS if s in present]


def cv_label(n_folds) -> str:
    """'5-fold CV' from the n_folds column (one value), else 'CV'."""
    values = {int(v) for v in pd.Series(n_folds, dtype=float).dropna()}
    return f"{values.pop()}-fold CV" if len(values) == 1 else "CV"
