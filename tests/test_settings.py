"""Setting values and the migration of the old ones."""

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.common.errors import InputError
from workflow_scripts.evaluation.settings import cv_label, migrate_setting, normalise_settings, order_settings


def test_migration_of_old_values():
    assert migrate_setting("5-fold-cv") == ("cv", 5.0)
    assert migrate_setting("3-fold-cv") == ("cv", 3.0)
    setting, folds = migrate_setting("held-out-center")
    assert setting == "loco" and np.isnan(folds)
    for new in ("cv", "external", "loco", "released", "prompted"):
        assert migrate_setting(new)[0] == new


def test_normalise_keeps_new_fold_counts_and_rejects_unknown():
    df = pd.DataFrame({"setting": ["cv", "5-fold-cv", "external"], "n_folds": [3, np.nan, 3]})
    out = normalise_settings(df, "x.tsv")
    assert out.setting.tolist() == ["cv", "cv", "external"] and out.n_folds.tolist() == [3, 5, 3]
    with pytest.raises(InputError, match="x.tsv.*unknown setting"):
        normalise_settings(pd.DataFrame({"setting": ["cv", ""]}), "x.tsv")
    with pytest.raises(InputError, match="lacks the 'setting' column"):
        normalise_settings(pd.DataFrame({"case": ["a"]}), "x.tsv")


def test_order_and_cv_label():
    assert order_settings(["prompted", "cv", "loco", "cv"]) == ["cv", "loco", "prompted"]
    assert cv_label([5, 5, np.nan]) == "5-fold CV" and cv_label([]) == "CV" and cv_label([3, 5]) == "CV"
