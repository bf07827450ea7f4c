"""The model catalog: three kinds of model (trainable, released bundles, prompted SAM/MedSAM), their
checks (errors name the config key) and the helpers the rules use. rules/common.smk is plain Python
apart from Snakemake's globals, so it is run here with a validated config and a stand-in `workflow`."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from helpers import REPO, snakemake

TINY = REPO / "tests" / "data" / "tiny.yaml"
PAPER_ROWS = ["nnunet", "pansegnet", "transunet3d", "lintransunet", "unet2d", "axunet"]


def load_common(cfg: dict, basedir=REPO) -> dict:
    """rules/common.smk's globals for `cfg` (validated and filled with the schema's defaults)."""
    validate(cfg, str(REPO / "config" / "schemas" / "config.schema.yaml"))
    workflow = types.SimpleNamespace(
        basedir=str(basedir),
        resource_settings=types.SimpleNamespace(default_resources=None, overwrite_resources={}),
        deployment_settings=types.SimpleNamespace(deployment_method=set()),
    )
    ns = {"config": cfg, "workflow": workflow, "checkpoints": None, "report": None}
    exec(compile((REPO / "rules" / "common.smk").read_text(encoding="utf-8"), "rules/common.smk", "exec"), ns)
    return ns


def tiny(edit=None) -> dict:
    cfg = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    if edit:
        edit(cfg)
    return cfg


@pytest.fixture
def sam_checkpoint(tmp_path):
    path = tmp_path / "sam_vit_h.pth"
    path.write_bytes(b"not read at parse time")
    return path


@pytest.fixture
def study(sam_checkpoint):
    """Every kind in one T1 study: the paper's trainable rows, SAM, a released model for T1 and one for T2 only."""

    def edit(c):
        c["models"] = [*PAPER_ROWS, "sam", "released_t1", "released_t2"]
        c["model_catalog"].update({"sam": {"prompt": {"checkpoint": str(sam_checkpoint)}},
                                   "released_t1": {"bundle": {"T1": "results/imported/t1.tar"}, "label": "PanSegNet (released)"},
                                   "released_t2": {"bundle": {"T2": "results/imported/t2.tar"}}})

    return load_common(tiny(edit))


def test_kinds_settings_and_labels(study):
    s = study
    assert [s["model_kind"](m) for m in ("nnunet", "lintransunet", "sam", "released_t1")] == [
        "trainable", "trainable", "prompted", "released"]
    assert [s["model_setting"](m) for m in ("pansegnet", "sam", "released_t1")] == [None, "prompted", "released"]
    assert s["model_label"]("transunet3d") == "PanSegNet with softmax attention (TransUNet-3D stand-in)"
    assert s["model_label"]("released_t1") == "PanSegNet (released)" and s["model_label"]("nnunet") == "nnunet"
    import json

    labels = json.loads(s["model_labels_json"]())
    assert list(labels) == sorted([*PAPER_ROWS, "sam", "released_t1", "released_t2"])
    assert labels["sam"] == "SAM (box prompt from the reference label)"
    assert s["trainable_models"]() == PAPER_ROWS
    assert s["prediction_only_models"]() == ["sam", "released_t1", "released_t2"]
    assert s["prediction_only_models"]("T1") == ["sam", "released_t1"]  # no T2 here: released_t2 has no jobs
    assert s["models_for"]("T1") == [*PAPER_ROWS, "sam", "released_t1"]
    assert s["model_prompt"]("sam") == {"method": "sam", "model_type": "vit_h", "checkpoint": s["config"]["model_catalog"]["sam"]["prompt"]["checkpoint"]}
    assert s["model_bundle"]("released_t1", "T1") == "results/imported/t1.tar"
    # the built-in trainable models keep their defaults; prediction-only ones get no trainer keys
    assert s["model_conf"]("lintransunet")["configuration"] == "3d_fullres" and s["model_conf"]("lintransunet")["network"] == {}
    assert "configuration" not in s["model_conf"]("sam") and "network" not in s["model_conf"]("released_t1")


def test_prediction_only_models_get_no_training_bundle_or_loco_jobs(study):
    s = study
    bundles = s["all_bundles"]()
    assert len(bundles) == len(PAPER_ROWS) and not any(m in b for b in bundles for m in ("/sam/", "/released_"))
    assert s["LOCO_MODELS"] == ["nnunet"]
    curves = [f for f in s["figures_all"]() if "training_curves" in f and f.endswith(".png")]
    assert sorted(Path(f).parent.name for f in curves) == sorted(PAPER_ROWS)
    overlays = [Path(f).parent.name for f in s["figures_all"]() if "overlays" in f and f.endswith(".png")]
    assert overlays == [*PAPER_ROWS, "sam", "released_t1"]
    assert s["nnunet_configurations"]() == ["2d", "3d_fullres"]
    with pytest.raises(ValueError, match="sam is a prompted model: it has no training folds"):
        s["fold_dir"]("T1", "sam", 0)
    # their evaluations: every center of the modality, from masks of their own setting
    metrics = s["metrics_all"]()  # the per-case tables the statistics and tables read
    assert sum("/sam/" in f for f in metrics) == 4 and sum("/released_t1/" in f for f in metrics) == 4
    assert not any("/released_t2/" in f for f in metrics)
    w = types.SimpleNamespace(modality="T1", model="sam", center="AHN")
    assert s["center_masks"](w).endswith("T1/sam/centers/AHN/prompted_masks")
    assert s["setting_of_center"](w) == "prompted"
    w = types.SimpleNamespace(modality="T1", model="released_t1", center="NYU")
    assert s["center_masks"](w).endswith("T1/released_t1/centers/NYU/released_masks")
    assert s["setting_of_center"](w) == "released"
    assert s["setting_of_center"](types.SimpleNamespace(modality="T1", model="nnunet", center="NYU")) == "external"


def test_paper_config_lists_the_comparison_models():
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text(encoding="utf-8"))
    assert cfg["models"] == PAPER_ROWS and cfg["statistics"]["reference_model"] == "pansegnet"
    text = (REPO / "config" / "paper.yaml").read_text(encoding="utf-8")
    for key in ("#   sam:", "#     prompt: {checkpoint:", "#   medsam:"):
        assert key in text, key


def test_prompted_python_is_the_sam_venv_unless_conda(study, tmp_path):
    s = load_common(tiny(), basedir=tmp_path)  # no .venv-sam there
    assert s["prompted_python"]() == "python"
    (tmp_path / ".venv-sam" / "bin").mkdir(parents=True)
    (tmp_path / ".venv-sam" / "bin" / "python").write_text("")
    assert s["prompted_python"]() == str(tmp_path / ".venv-sam" / "bin" / "python")
    from snakemake.settings.types import DeploymentMethod

    s["workflow"].deployment_settings.deployment_method = {DeploymentMethod.CONDA}
    assert s["prompted_python"]() == "python"  # the rule's conda env (envs/sam.yaml)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c, ck: c.update(models=["nnunet", "sam"]),
         "model_catalog.sam.prompt.checkpoint: sam needs the vit_h checkpoint file of SAM"),
        (lambda c, ck: (c.update(models=["medsam"]), c["model_catalog"].update(medsam={"prompt": {"checkpoint": "no/such.pth"}})),
         "model_catalog.medsam.prompt.checkpoint: no/such.pth: file does not exist"),
        (lambda c, ck: c["model_catalog"].update(mine={"trainer": "a.b:C", "bundle": {"T1": "x.tar"}}),
         "model_catalog.mine: give exactly one of 'trainer', 'bundle' or 'prompt'"),
        (lambda c, ck: c["model_catalog"].update(pansegnet={"bundle": {"T1": "x.tar"}}),
         "model_catalog.pansegnet.bundle: the built-in pansegnet is a trainable model"),
        (lambda c, ck: c["model_catalog"].update(mine={"label": "Mine"}),
         "model_catalog.mine: a new model needs one of 'trainer'"),
        (lambda c, ck: c["model_catalog"].update(rel={"bundle": {"T1": "x.tar"}, "configuration": "2d"}),
         "model_catalog.rel.configuration: only a trainable model"),
        (lambda c, ck: c["model_catalog"].update(mysam={"prompt": {"method": "sam", "checkpoint": str(ck)}}) or
         c.update(models=["nnunet", "mysam"]), "model_catalog.mysam.prompt.model_type: missing"),
        (lambda c, ck: (c.update(models=["nnunet", "sam"], loco_models=["sam"]),
                        c["model_catalog"].update(sam={"prompt": {"checkpoint": str(ck)}})),
         "loco_models: 'sam' is a prompted model: it is never trained"),
    ],
)
def test_catalog_errors_name_the_key(edit, message, sam_checkpoint):
    with pytest.raises(ValueError) as err:
        load_common(tiny(lambda c: edit(c, sam_checkpoint)))
    assert message in str(err.value)


@pytest.mark.parametrize("prompt, word", [({"method": "sam2"}, "sam2"), ({"model_type": "vit_x"}, "vit_x"),
                                          ({"weights": "x"}, "weights")])
def test_schema_refuses_bad_prompt_keys(prompt, word):
    with pytest.raises(Exception) as err:
        load_common(tiny(lambda c: c["model_catalog"].update(sam={"prompt": prompt})))
    assert word in str(err.value)


@pytest.mark.workflow  # runs Snakemake (a dry run: seconds)
def test_missing_checkpoint_stops_the_run_before_any_job(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny(lambda c: c.update(models=["nnunet", "pansegnet", "medsam"]))))
    proc = snakemake("-n", "--configfile", str(cfg), workdir=tmp_path, check=False, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "model_catalog.medsam.prompt.checkpoint" in out
    assert "Job stats" not in out and not (tmp_path / "results").exists()
