"""Upgrading the workflow never re-trains a finished study unless the training recipe changed.

A lab may be weeks into training when it pulls a new version. Snakemake re-runs a job whose
recorded code, params or input set changed, so:
- the training rules are frozen: their shell command, param names and input names are compared
  with tests/data/frozen_training_rules.json (change them only together with an upgrade path in
  workflow_scripts/common/upgrade.py, and say so in the release notes);
- a complete run made with an earlier landed version (BASELINE) and then this checkout: the dry
  run plans no training job; a changed budget still re-trains.

Keep the upgrade test for later commits. When a new version lands, BASELINE may move to it (the
test then checks the upgrade from that version); it must stay a commit of `main`'s history.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from helpers import REPO, job_counts, snakemake

# The last landed commit before the training recipe (train predicted out-of-fold cases itself).
BASELINE = "80adb6e"
TRAINING_RULES = {"train", "train_loco"}
FROZEN = REPO / "tests" / "data" / "frozen_training_rules.json"


def test_training_rules_are_frozen():
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "rule_inventory.py"),
                           str(REPO / "tests" / "data" / "tiny.yaml")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rules = {r["name"]: r for r in json.loads(proc.stdout)["rules"]}
    frozen = json.loads(FROZEN.read_text(encoding="utf-8"))
    for name, want in frozen.items():
        got = {k: rules[name][k] for k in want}
        assert got == want, (
            f"rule {name} changed: Snakemake would re-train every finished fold of every lab that upgrades. "
            f"Keep the rule as in {FROZEN.name}, or add an upgrade path (workflow_scripts/common/upgrade.py) and a test")


def test_adoption_rewrites_only_matching_legacy_records(tmp_path, monkeypatch):
    """Unit test of workflow_scripts.common.upgrade on hand-made Snakemake records."""
    from snakemake.persistence import MetadataRecord

    from workflow_scripts.common import upgrade

    monkeypatch.chdir(tmp_path)
    legacy = upgrade.legacy_train_params(dataset_id=7, trainer="m:T", configuration="3d_fullres", network_json="{}",
                                         results_root="results/T1/x", training={"epochs": 2, "seed": 1},
                                         mirroring=False)
    store = upgrade._store(".snakemake")
    jobs = []
    for name, params in [("same", legacy), ("other", [*legacy[:-1], "'changed'"])]:
        out = tmp_path / name / "checkpoint_final.pth"
        out.parent.mkdir()
        out.write_bytes(b"x")
        rec = MetadataRecord(rule="train", code=upgrade.LEGACY_TRAIN_SHELL, params=params, input=["old"],
                             record_format_version=6)
        store._write_record(str(out.relative_to(tmp_path)), rec)
        jobs.append(upgrade.TrainingJob(outputs=[str(out.relative_to(tmp_path))], code="new code",
                                        params=["'recipe'"], input=["b", "a"], legacy_params=[legacy]))
    assert upgrade.adopt_legacy_training(".snakemake", jobs) == ["same/checkpoint_final.pth"]
    store = upgrade._store(".snakemake")
    same, other = store._read_record("same/checkpoint_final.pth"), store._read_record("other/checkpoint_final.pth")
    assert (same.code, same.params, same.input) == ("new code", ["'recipe'"], ["a", "b"])
    assert (other.code, other.input) == (upgrade.LEGACY_TRAIN_SHELL, ["old"])
    assert upgrade.adopt_legacy_training(".snakemake", jobs) == []  # idempotent


def _baseline_tree(dest: Path) -> Path:
    """The BASELINE commit's files (git archive), or skip when this clone lacks that commit."""
    probe = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{BASELINE}^{{commit}}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"commit {BASELINE} is not in this clone: the upgrade test needs main's history "
                        "(.ci/run unshallows a shallow clone)")
        pytest.skip(f"commit {BASELINE} is not in this clone (shallow?): cannot test the upgrade from it")
    archive = dest.parent / "baseline.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), BASELINE], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _config(path: Path, epochs: int = 1) -> Path:
    cfg = {
        "study": "upgrade-test",
        "sources": {"synthetic": {"type": "synthetic", "modalities": ["T1"], "centers": ["AHN", "MCF", "NYU"],
                                  "cases_per_center": 3, "seed": 7}},
        "modalities": {"T1": {"source": "synthetic", "folder": "t1", "mapping": "T1-name_mapping.json",
                              "participant_regex": r"^(?P<participant>[A-Z]+-P\d+)-V\d+-", "dataset_id": 904,
                              "train_centers": ["AHN", "MCF"], "external_centers": ["NYU"]}},
        "prepare": {"label_header_mismatch": "use_image"},
        "folds": 2,
        "models": ["nnunet"],
        "plan": {"target_spacing": [4.0, 3.0, 3.0],
                 "configurations": {"3d_fullres": {"features_per_stage": [4, 8, 16], "batch_size": 2}}},
        "training": {"epochs": epochs, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1,
                     "initial_lr": 0.003, "optimizer": "adamw", "save_every": 1},
        "inference": {"mirroring": False},
        "resources": {"preprocess": {"threads": 1, "mem_mb": 2000, "runtime": 10},
                      "train": {"threads": 1, "mem_mb": 2000, "runtime": 10},
                      "predict": {"threads": 1, "mem_mb": 2000, "runtime": 10}},
    }
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.mark.workflow
def test_upgrade_from_baseline_plans_no_training(tmp_path):
    baseline = _baseline_tree(tmp_path / "baseline")
    work = tmp_path / "work"
    work.mkdir()
    cfg = _config(tmp_path / "study.yaml")
    folds = [f"results/T1/nnunet/Dataset904_T1/NnUNetTrainer__nnUNetPlans__3d_fullres/fold_{k}/checkpoint_final.pth"
             for k in range(2)]
    # The lab's state: the earlier version trained every fold (and what it needs).
    snakemake(*folds, "--cores", "2", "--configfile", str(cfg), workdir=work, timeout=900,
              snakefile=baseline / "Snakefile")
    trained = {f: (work / f).stat().st_mtime_ns for f in folds}
    # This version: nothing trains again ...
    proc = snakemake("-n", "--configfile", str(cfg), workdir=work, timeout=300)
    counts = job_counts(proc.stdout)
    assert not TRAINING_RULES & set(counts), f"the upgrade re-trains: {counts}\n{proc.stderr[-3000:]}"
    # ... running it (upstream steps whose rules changed re-run first; Snakemake then re-evaluates the
    # DAG) predicts and evaluates with the same checkpoints and leaves nothing to do ...
    run = snakemake("--cores", "2", "--configfile", str(cfg), workdir=work, timeout=900)
    assert "rule train:" not in run.stdout + run.stderr
    assert {f: (work / f).stat().st_mtime_ns for f in folds} == trained
    assert (work / "results" / "tables" / "per_case.tsv").exists()
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake("-n", "--configfile", str(cfg),
                                                                             workdir=work, timeout=300))
    # ... and the adopted folds still answer to their recipe: a new budget trains them again.
    counts = job_counts(snakemake("-n", "--configfile", str(_config(tmp_path / "more.yaml", epochs=2)),
                                  workdir=work, timeout=300).stdout)
    assert counts.get("train") == 2, counts
