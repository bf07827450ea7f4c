"""Config of real-data sources: wrong keys and values stop the run with an error naming them."""

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from helpers import REPO, snakemake

SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"

BASE = {
    "sources": {
        "osf": {"type": "osf"},
        "msd": {"type": "url", "url": "https://example.org/Task07_Pancreas.tar", "md5": "0" * 32,
                "layout": "decathlon", "center": "MSD", "foreground_labels": [1, 2]},
        "nih": {"type": "local", "path": "nih", "layout": "decathlon", "center": "NIH"},
    },
    "modalities": {
        "CT": {"source": "msd", "center_sources": {"NIH": "nih"}, "dataset_id": 109, "train_centers": ["MSD"],
               "external_centers": ["NIH"]},
        "T1": {"source": "osf", "folder": "t1", "dataset_id": 110, "train_centers": ["AHN", "MCF"]},
    },
    "models": ["nnunet"],
}


def edited(edit):
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    edit(cfg)
    return cfg


def test_good_config_is_valid_and_gets_defaults():
    cfg = edited(lambda c: None)
    validate(cfg, str(SCHEMA))
    assert cfg["sources"]["osf"]["node"] == "kysnj" and cfg["sources"]["osf"]["token_env"] == "OSF_TOKEN"
    assert "/Meta informations/*name_mapping.json" in cfg["sources"]["osf"]["files"]
    assert cfg["sources"]["nih"]["mode"] == "link" and cfg["modalities"]["T1"]["center_sources"] == {}


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["sources"]["msd"].pop("md5"), "md5"),
        (lambda c: c["sources"]["msd"].update(layout="bids"), "bids"),
        (lambda c: c["sources"]["msd"].update(center="msd"), "msd"),
        (lambda c: c["sources"]["osf"].update(tokne_env="X"), "tokne_env"),
        (lambda c: c["sources"]["osf"].update(pins={"/t1.zip": {"sha256": "abc"}}), "abc"),
        (lambda c: c["sources"]["nih"].pop("path"), "path"),
        (lambda c: c["sources"]["nih"].update(type="ftp"), "ftp"),
        (lambda c: c["sources"].update({"my/data": {"type": "local", "path": "x"}}), "my/data"),
    ],
)
def test_schema_names_the_bad_key(edit, key):
    with pytest.raises(WorkflowError, match=key):
        validate(edited(edit), str(SCHEMA))


@pytest.mark.workflow  # runs Snakemake (a dry run: seconds)
@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["modalities"]["CT"]["center_sources"].update(XYZ="nih"), "modalities.CT.center_sources"),
        (lambda c: c["modalities"]["CT"]["center_sources"].update(NIH="nowhere"), "center_sources.NIH"),
        (lambda c: c["modalities"]["CT"].update(center_sources={}), "route NIH to its own source"),
    ],
)
def test_cross_checks_name_the_key(tmp_path, edit, key):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(edited(edit)))
    proc = snakemake("-n", "--configfile", str(path), workdir=tmp_path, check=False, timeout=120)
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr
