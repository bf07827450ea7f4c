"""Keep finished training when a lab upgrades from a workflow version without the training recipe.

Snakemake re-runs a job when the code, params or input files recorded with its outputs differ from
the current rule's. Up to commit 80adb6e the ``train`` rule had another shell command, inputs and
params (among them the test-time mirroring flag and the results folder), so every finished fold
would look changed after an upgrade and train again, for weeks on a study. Before the DAG is
built, the workflow therefore looks at the Snakemake record of every training output it expects:
a record written by that earlier ``train`` rule whose params show the *same* training (dataset,
trainer, configuration, network options, budget) is rewritten as the current rule would have
written it. Anything else (no record, another rule, another recipe) is left alone, and Snakemake
decides as usual: a fold whose recipe changed trains again.

Only Snakemake's default file-based metadata store (``.snakemake/metadata``) is handled.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# The shell command of the `train` rule from commit fd06e04 up to 80adb6e (the last landed version
# before the training recipe), exactly as Snakemake recorded it.
LEGACY_TRAIN_SHELL = (
    "python -m workflow_scripts.train --preprocessed-root {input.preprocessed} --raw-root {input.raw} "
    "--results-root {params.results} --dataset-id {params.dataset_id} --modality {wildcards.modality} "
    "--trainer {params.trainer} --configuration {params.configuration} --network '{params.network}' "
    "--fold {wildcards.fold} --splits {input.splits} --epochs {params.t[epochs]} "
    "--iterations {params.t[iterations_per_epoch]} --val-iterations {params.t[val_iterations_per_epoch]} "
    "--lr {params.t[initial_lr]} --optimizer {params.t[optimizer]} --save-every {params.t[save_every]} "
    "--seed {params.t[seed]} --device {params.t[device]} {params.mirroring} --threads {threads} > {log} 2>&1"
)


def legacy_train_params(*, dataset_id: int, trainer: str, configuration: str, network_json: str,
                        results_root: str, training: dict, mirroring: bool) -> list[str]:
    """The params the legacy rule recorded (Snakemake stores the sorted reprs of the values)."""
    values = [dataset_id, trainer, configuration, network_json, results_root, dict(sorted(training.items())),
              "--mirroring" if mirroring else "--no-mirroring"]
    return sorted(repr(v) for v in values)


@dataclass
class TrainingJob:
    """What the current rule would record for one training job, and how the legacy rule recorded it."""

    outputs: list[str]
    code: str
    params: list[str]
    input: list[str]
    legacy_params: list[list[str]] = field(default_factory=list)  # any of these (mirroring on or off)


def _store(snakemake_dir):
    from snakemake.persistence.file import FilePersistence

    return FilePersistence(path=Path(snakemake_dir).resolve())


def adopt_legacy_training(snakemake_dir, jobs: list[TrainingJob]) -> list[str]:
    """Rewrite legacy records of finished training outputs whose recipe is unchanged; return those outputs."""
    metadata = Path(snakemake_dir) / "metadata"
    if not metadata.is_dir():
        return []
    store = None
    adopted = []
    for job in jobs:
        if not all(Path(o).exists() for o in job.outputs):
            continue
        store = store or _store(snakemake_dir)
        records = {o: store._read_record(o) for o in job.outputs}
        if any(r is None for r in records.values()):
            continue
        if not all(r.rule == "train" and r.code == LEGACY_TRAIN_SHELL for r in records.values()):
            continue  # written by the current rule (nothing to do) or by something unknown (leave alone)
        if not all(sorted(r.params or []) in job.legacy_params for r in records.values()):
            log.info("%s: trained with another recipe than the current config's; it will train again",
                     job.outputs[0])
            continue
        for output, record in records.items():
            record.code = job.code
            record.params = sorted(job.params)
            record.input = sorted(job.input)
            record.shellcmd = None
            store._write_record(output, record)
        adopted.append(job.outputs[0])
    return adopted


# ---- commands that only gained quoting ------------------------------------------------------
# The shell command of each rule up to the refactor that quotes every value with Snakemake's `:q`
# (the commit before it on main), as Snakemake recorded it. The new commands run the same programs
# with the same arguments for every value the config schema admits (quoting changes nothing for
# them), so finished jobs are not re-run for it: preprocessing and prediction take hours on a study.
REQUOTED_RULES = Path(__file__).with_name("requoted_rules.json")
REQUOTED_STAMP = "panseg_requoted_v1"  # in .snakemake/: the scan ran (new records never need it)


def _records(metadata: Path):
    for folder, _, files in os.walk(metadata):
        for name in files:
            yield Path(folder, name)


def adopt_requoted_commands(snakemake_dir, current: dict[str, str], previous: dict[str, str] | None = None) -> int:
    """Give records written with a rule's pre-`:q` command that rule's current command; return how many.

    `current`: rule name -> its shell command now. Scans ``.snakemake/metadata`` once (a stamp file
    marks it done); records of other rules or other commands are left alone.
    """
    snakemake_dir = Path(snakemake_dir)
    metadata, stamp = snakemake_dir / "metadata", snakemake_dir / REQUOTED_STAMP
    if not metadata.is_dir() or stamp.exists():
        return 0
    previous = previous if previous is not None else json.loads(REQUOTED_RULES.read_text(encoding="utf-8"))
    changed = 0
    for path in _records(metadata):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not a record (or unreadable): Snakemake decides
        rule = record.get("rule")
        if rule in previous and rule in current and record.get("code") == previous[rule] != current[rule]:
            record["code"] = current[rule]
            tmp = path.with_name(path.name + ".panseg-tmp")
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, path)
            changed += 1
    stamp.write_text(json.dumps({"rewritten": changed}), encoding="utf-8")
    return changed
