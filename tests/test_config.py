"""Config validation: wrong keys and values stop the run with an error naming the key."""

import shutil

import pytest
import yaml

from helpers import REPO, job_counts, snakemake

TINY = REPO / "tests" / "data" / "tiny.yaml"


def write_config(tmp_path, edit):
    cfg = yaml.safe_load(TINY.read_text())
    edit(cfg)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c.update(folds_typo=5), "folds_typo"),
        (lambda c: c["training"].update(epochs=0), "epochs"),
        (lambda c: c["training"].update(optimizer="rmsprop"), "rmsprop"),
        (lambda c: c["prepare"].update(on_bad_case="ignore"), "ignore"),
        (lambda c: c["modalities"]["T1"].update(source="nowhere"), "modalities.T1.source"),
        (lambda c: c.update(models=["nnunet", "magic"]), "magic"),
        (lambda c: c["modalities"]["T1"].update(external_centers=["AHN"]), "AHN"),
    ],
)
def test_bad_config_names_the_key(tmp_path, edit, key):
    cfg = write_config(tmp_path, edit)
    proc = snakemake("-n", "--configfile", str(cfg), workdir=tmp_path, check=False, timeout=120)
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr


def test_demo_dry_run_job_counts(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    proc = snakemake("-n", "--cores", "2", workdir=tmp_path, timeout=120)
    counts = job_counts(proc.stdout)
    # 2 modalities x 5 centers prepared; 2 modalities x 2 models x 5 folds trained;
    # per modality and model, 3 training centers collected and 2 external centers predicted.
    assert counts["prepare_center"] == 10
    assert counts["train"] == 20
    assert counts["collect_cv_masks"] == 12
    assert counts["predict_external"] == 8
    assert counts["evaluate_center"] == 20
    assert "train_loco" not in counts  # leave-one-center-out is off in the demo
    assert counts["synthetic_source"] == 1 and counts["tables"] == 1
