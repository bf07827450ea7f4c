"""PanSeg Workflow's code, one package per layer of the study (docs/architecture.md).

    deployment   bundles, released (nnU-Net v1) weights, segmenting new scans, DICOM
    reporting    figures, paper tables, overlays, versions
    evaluation   metrics, evaluation, statistics, rater agreement, summary tables
    nnunet       plans/preprocessing, training recipe, training, prediction, resampling
    trainers     nnU-Net trainer classes of the study's models (import paths held by recipes and bundles)
    models       their network architectures
    data         sources, image checks, prepare, manifest, splits, synthetic demo
    common       atomic writes, errors, hashing, safe archives, provenance, upgrades

Imports run downward only; ``make lint`` checks it (the import-linter contract in pyproject.toml).

Commands keep their short names: ``python -m workflow_scripts.<command>`` runs the ``main()`` of the
module that ``COMMANDS`` names (the rules and the docs call them so, and a lab's finished jobs keep
their recorded shell commands). ``python -m`` with a module's full name works as well.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

# command name -> module holding its main()
COMMANDS = {
    "agreement": "evaluation.agreement",
    "bundle": "deployment.bundle",
    "evaluate": "evaluation.evaluate",
    "figures": "reporting.figures",
    "loco": "reporting.loco_tables",
    "manifest": "data.manifest",
    "nnunet_dataset": "nnunet.raw_dataset",
    "oof": "nnunet.cv_masks",
    "paper_tables": "reporting.paper_tables",
    "predict": "nnunet.predict",
    "prepare": "data.prepare",
    "preprocess": "nnunet.preprocess",
    "prompted": "nnunet.prompted",
    "scale_check": "data.scale_check",
    "segment": "deployment.segment",
    "splits": "data.splits",
    "stats": "evaluation.stats",
    "synthetic": "data.synthetic",
    "tables": "evaluation.summary_tables",
    "train": "nnunet.train",
    "versions": "reporting.versions",
    "sources.local": "data.sources.local",
    "sources.nih": "data.sources.nih",
    "sources.osf": "data.sources.osf",
    "sources.url": "data.sources.url",
}

_STUB = """\
from {module} import *  # noqa: F401,F403  (the command's public names, for old imports)
from {module} import main

if __name__ == "__main__":  # also guards nnU-Net's spawned workers, which import __main__ again
    import sys

    sys.exit(main())
"""


class _CommandLoader(importlib.abc.Loader):
    """Runs a command name as a two-line module that calls the real module's main()."""

    def __init__(self, module: str):
        self.module = module

    def get_code(self, fullname):  # what `python -m` (runpy) executes
        return compile(_STUB.format(module=self.module), f"<command {fullname} -> {self.module}>", "exec")

    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)


class _CommandFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix = __name__ + "."
        name = fullname[len(prefix):] if fullname.startswith(prefix) else None
        if name in COMMANDS:
            module = prefix + COMMANDS[name]
            # origin: the real file, which runpy puts in sys.argv[0] (argparse's program name)
            return importlib.util.spec_from_loader(fullname, _CommandLoader(module),
                                                   origin=importlib.util.find_spec(module).origin)
        if name and any(command.startswith(name + ".") for command in COMMANDS):
            # `sources` moved to data.sources: an empty package keeps `sources.osf` & co. as command names
            return importlib.util.spec_from_loader(fullname, None, is_package=True)
        return None


# First on the path: a command name must not find a stale module of an older checkout or install.
if not any(isinstance(f, _CommandFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _CommandFinder())
