"""The model catalog: built-in models (config/models.yaml) merged with a run's config ``model_catalog``.

An entry is one of three kinds, named by the key that makes it: ``trainer`` (trainable), ``bundle``
(released weights) or ``prompt`` (SAM/MedSAM given a box). A config entry overrides a built-in one
key by key (``prompt`` one level deeper) but cannot change its kind.
"""

from __future__ import annotations

from pathlib import Path

import yaml

BUILTIN_FILE = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
# The key that makes an entry each kind, and the kind's name (also the setting of prediction-only kinds).
KIND_KEYS = {"trainer": "trainable", "bundle": "released", "prompt": "prompted"}


def builtin_models(path=BUILTIN_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def catalog_entry(name: str, builtin: dict, entry: dict) -> dict:
    """One model's entry: the built-in one overridden key by key (`prompt` one level deeper), one kind."""
    given = [k for k in KIND_KEYS if k in entry]
    if len(given) > 1:
        raise ValueError(f"model_catalog.{name}: give exactly one of 'trainer', 'bundle' or 'prompt', not {given}")
    base = [k for k in KIND_KEYS if k in builtin]
    if given and base and given != base:
        raise ValueError(
            f"model_catalog.{name}.{given[0]}: the built-in {name} is a {KIND_KEYS[base[0]]} model "
            f"('{base[0]}'); a model of another kind needs a name of its own"
        )
    merged = {**builtin, **entry}
    if "prompt" in builtin and "prompt" in entry:
        merged["prompt"] = {**builtin["prompt"], **entry["prompt"]}
    if not any(k in merged for k in KIND_KEYS):
        raise ValueError(
            f"model_catalog.{name}: a new model needs one of 'trainer' (module:Class), "
            "'bundle' ({modality: bundle.tar}) or 'prompt' ({method, model_type, checkpoint})"
        )
    if "trainer" in merged:
        return {"configuration": "3d_fullres", "network": {}, **merged}
    for key in ("configuration", "network"):
        if key in merged:
            raise ValueError(f"model_catalog.{name}.{key}: only a trainable model (with a 'trainer') has one")
    return merged


def build_catalog(config_catalog: dict, builtin: dict | None = None) -> dict:
    """Every built-in model plus the config's, each merged into one entry of one kind."""
    builtin = builtin_models() if builtin is None else builtin
    names = {**{n: {} for n in builtin}, **(config_catalog or {})}
    return {name: catalog_entry(name, builtin.get(name, {}), entry or {}) for name, entry in names.items()}


def model_kind(entry: dict) -> str:
    """'trainable', 'released' or 'prompted'."""
    return next(kind for key, kind in KIND_KEYS.items() if key in entry)
