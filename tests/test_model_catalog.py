"""The model catalog: built-in models from config/models.yaml, merged with a config's model_catalog."""

import importlib

import pytest

from workflow_scripts.common import model_catalog as mc


def test_builtin_models_are_the_papers_and_the_seeds():
    builtin = mc.builtin_models()
    assert set(builtin) == {"nnunet", "pansegnet", "unet2d", "axunet", "transunet3d", "lintransunet", "sam", "medsam"}
    kinds = {name: mc.model_kind(mc.catalog_entry(name, entry, {})) for name, entry in builtin.items()}
    assert kinds["sam"] == kinds["medsam"] == "prompted"
    assert {k for n, k in kinds.items() if n not in ("sam", "medsam")} == {"trainable"}


def test_every_builtin_trainer_imports():
    for name, entry in mc.builtin_models().items():
        if "trainer" in entry:
            module, _, cls = entry["trainer"].partition(":")
            assert hasattr(importlib.import_module(module), cls), name


def test_config_entries_override_key_by_key_and_add_models():
    catalog = mc.build_catalog({"pansegnet": {"network": {"heads": 2}},
                                "sam": {"prompt": {"checkpoint": "sam.pth"}},
                                "mine": {"trainer": "pkg.mod:MyTrainer"},
                                "released": {"bundle": {"T1": "b.tar"}}})
    assert catalog["pansegnet"]["trainer"].endswith(":PanSegNetTrainer")
    assert catalog["pansegnet"]["network"] == {"heads": 2}
    assert catalog["sam"]["prompt"] == {"method": "sam", "model_type": "vit_h", "checkpoint": "sam.pth"}
    assert catalog["mine"] == {"configuration": "3d_fullres", "network": {}, "trainer": "pkg.mod:MyTrainer"}
    assert mc.model_kind(catalog["released"]) == "released"
    assert "nnunet" in catalog  # built-ins stay


@pytest.mark.parametrize("entry, message", [
    ({"nnunet": {"bundle": {"T1": "b.tar"}}}, "the built-in nnunet is a trainable model"),
    ({"x": {"trainer": "a:B", "bundle": {}}}, "give exactly one of"),
    ({"x": {"label": "X"}}, "a new model needs one of"),
    ({"x": {"bundle": {"T1": "b.tar"}, "configuration": "2d"}}, "only a trainable model"),
])
def test_bad_entries_are_named(entry, message):
    with pytest.raises(ValueError, match=message):
        mc.build_catalog(entry)
