"""nnU-Net v2 trainer classes for the study's models, kept outside the nnunetv2 package.

Each model is one trainer class; config names it by import path ``module:Class``. Training,
resume and prediction construct these classes directly (never by nnU-Net's name lookup, which
imports every trainer nnU-Net ships and fails where torchvision does not import).
"""

from __future__ import annotations

import importlib


def load_trainer_class(path: str):
    """Import ``package.module:ClassName`` and return the class."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"trainer {path!r}: expected 'package.module:ClassName'")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"trainer {path!r} cannot be imported: {exc}") from exc
    return cls
