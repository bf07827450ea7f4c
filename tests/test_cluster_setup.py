"""The cluster setup, checked without a cluster: profiles and the rules' resources.

profiles/slurm holds how to talk to SLURM (site settings, status command, requeue, retries);
the rules declare what each job needs, from config `resources:`; light rules are localrules.
tests/test_slurm.py runs all of it on a real one-node SLURM cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, snakemake

SHIPPED = REPO / "profiles" / "slurm" / "config.yaml"
TEST_PROFILE = REPO / "tests" / "slurm" / "profile" / "config.yaml"
# What the test profile may replace: site settings, the deployment method (no conda on CI) and
# the pace of a cluster whose jobs take seconds.
TEST_PROFILE_KEYS = {"default-resources", "set-resources", "software-deployment-method",
                     "slurm-init-seconds-before-status-checks", "jobs", "local-cores"}
SITE_RESOURCES = {"slurm_partition", "slurm_account"}
# Heavy rules and the config `resources:` entry that sizes them; every other rule is a localrule.
RESOURCE_KEY = {"synthetic_source": "sources", "local_source": "sources", "prepare_center": "prepare",
                "preprocess": "preprocess", "preprocess_loco": "preprocess", "train": "train", "train_loco": "train",
                "predict_oof": "predict", "predict_external": "predict", "predict_loco": "predict",
                "predict_released": "predict", "predict_prompted": "predict",
                "evaluate_center": "evaluate", "evaluate_loco": "evaluate", "segment_folder": "predict"}
GPU_RULES = {"train", "train_loco", "predict_oof", "predict_external", "predict_loco", "predict_released",
             "predict_prompted", "segment_folder"}


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


def snakemake_options() -> set[str]:
    from snakemake.cli import get_argument_parser  # with the executor plugins' options

    return {o for action in get_argument_parser()._actions for o in action.option_strings}


@pytest.mark.parametrize("path", [SHIPPED, TEST_PROFILE], ids=["profiles/slurm", "tests/slurm/profile"])
def test_profile_keys_are_snakemake_options(path):
    unknown = sorted(k for k in load(path) if f"--{k}" not in snakemake_options())
    assert not unknown, f"{path}: not Snakemake (or SLURM plugin) options: {unknown}"


def test_shipped_profile():
    p = load(SHIPPED)
    assert p["executor"] == "slurm" and isinstance(p["jobs"], int) and p["jobs"] >= 10
    # site settings are placeholders that fail loudly until filled in (docs/cluster.md)
    assert set(p["default-resources"]) == SITE_RESOURCES
    assert all(str(v).startswith("FILL_IN_") for v in p["default-resources"].values())
    assert set(p["set-resources"]) == GPU_RULES
    assert all(set(v) == {"slurm_partition"} and v["slurm_partition"] == "FILL_IN_GPU_PARTITION"
               for v in p["set-resources"].values())
    # works with or without slurmdbd (sacct without it hangs the run)
    assert p["slurm-status-command"] == "squeue"
    # preempted jobs go back to the queue; failed ones are retried; both resume from checkpoints
    assert p["slurm-requeue"] is True and p["retries"] >= 1
    assert p["rerun-incomplete"] is True and p["latency-wait"] >= 30
    assert p["software-deployment-method"] == "conda"
    # rule needs come from the rules, never from the profile
    for needs in ("mem_mb", "runtime", "gpu", "cpus_per_task", "threads"):
        assert needs not in p["default-resources"]
    assert "set-threads" not in p


def test_test_profile_only_replaces_site_settings():
    t = load(TEST_PROFILE)
    assert set(t) <= TEST_PROFILE_KEYS, f"tests/slurm/profile changes more than site settings: {set(t) - TEST_PROFILE_KEYS}"
    assert set(t["default-resources"]) <= SITE_RESOURCES
    assert set(t["set-resources"]) == set(load(SHIPPED)["set-resources"])
    assert all(set(v) <= SITE_RESOURCES for v in t["set-resources"].values())
    # env-modules stands in for "no conda": it only acts on rules with envmodules: (none has)
    assert t["software-deployment-method"] == "env-modules"


def default_profile_clashes(root: Path) -> list[str]:
    """Keys of <root>/profiles/default that would override profiles/slurm.

    Snakemake loads profiles/default (next to the Snakefile or in the working directory) by
    itself, after --profile, and its keys win: a default-resources there drops the slurm
    profile's account and partition.
    """
    clashes = []
    shipped = set(load(SHIPPED))
    for name in ("config.yaml", "profile.yaml"):
        path = root / "profiles" / "default" / name
        if path.exists():
            clashes += sorted(shipped & set(load(path)))
    return clashes


def test_no_default_profile_overrides_the_slurm_profile():
    clashes = default_profile_clashes(REPO)
    assert not clashes, f"profiles/default overrides these keys of profiles/slurm: {clashes} (keep it disjoint)"


def test_default_profile_clash_is_detected(tmp_path):
    (tmp_path / "profiles" / "default").mkdir(parents=True)
    (tmp_path / "profiles" / "default" / "config.yaml").write_text("default-resources: {mem_mb: 1000}\ncores: 2\n")
    assert default_profile_clashes(tmp_path) == ["default-resources"]


@pytest.mark.workflow  # runs Snakemake (a dry run: seconds)
def test_both_profiles_dry_run(tmp_path):
    """The profile pair parses and gives every cluster job its partition (no cluster needed)."""
    proc = snakemake("-n", "--profile", str(SHIPPED.parent), "--profile", str(TEST_PROFILE.parent), "--configfile",
                     str(REPO / "tests" / "slurm" / "cluster.yaml"), workdir=tmp_path, timeout=180)
    out = proc.stdout + proc.stderr
    assert "slurm_partition=panseg" in out and "FILL_IN" not in out


@pytest.mark.workflow  # runs Snakemake (a dry run: seconds)
def test_unfilled_site_settings_stop_the_run(tmp_path):
    """The shipped placeholders stop the run before anything is submitted, naming each one."""
    proc = snakemake("-n", "--profile", str(SHIPPED.parent), "--sdm", "env-modules", "--configfile",
                     str(REPO / "tests" / "slurm" / "cluster.yaml"), workdir=tmp_path, timeout=180, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "docs/cluster.md" in out
    for placeholder in ("slurm_account=FILL_IN_ACCOUNT", "slurm_partition=FILL_IN_CPU_PARTITION",
                        "train: slurm_partition=FILL_IN_GPU_PARTITION"):
        assert placeholder in out


# ---- resources declared by the rules ------------------------------------------------------------
def inventory(config: Path) -> list[dict]:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "rule_inventory.py"), str(config)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)["rules"]


@pytest.mark.parametrize("config", ["config/config.yaml", "config/paper.yaml"])
def test_heavy_rules_declare_their_needs_from_config(config):
    needs = load(REPO / config)["resources"]
    for rule in inventory(REPO / config):
        if rule["local"] or rule["norun"]:
            continue
        key = RESOURCE_KEY.get(rule["name"])
        assert key, (f"rule {rule['name']} ({rule['snakefile']}) runs as a cluster job: declare threads, mem_mb "
                     f"and runtime from a config resources entry (add it to RESOURCE_KEY), or make it a localrule")
        want = needs[key]
        got = rule["resources"]
        assert got.get("mem_mb") == want["mem_mb"] and got.get("runtime") == want["runtime"], (rule["name"], got)
        assert rule["threads"] == want.get("threads", 1), rule["name"]
        assert got.get("gpu", 0) == want.get("gpu", 0), rule["name"]
        if rule["name"] in GPU_RULES and config.endswith("paper.yaml"):
            assert got["gpu"] == 1, f"{rule['name']} trains or predicts on a GPU in the study"


def test_light_rules_are_local():
    rules = {r["name"]: r for r in inventory(REPO / "config" / "paper.yaml")}
    local = {n for n, r in rules.items() if r["local"]}
    # downloads (compute nodes often lack internet) and seconds-long table/link/copy steps
    assert {"osf_source", "url_source", "manifest", "nnunet_raw", "nnunet_raw_loco", "split", "collect_cv_masks",
            "tables"} <= local
    assert not local & set(RESOURCE_KEY), f"heavy rules made local: {local & set(RESOURCE_KEY)}"
    unsized = set(rules) - set(RESOURCE_KEY) - local - {"all"}
    assert not unsized, f"rules neither sized from config nor local: {sorted(unsized)}"


def test_gpu_rules_get_the_gpu_partition():
    """Every rule that asks for a GPU is sent to the GPU partition by the shipped profile."""
    rules = inventory(REPO / "config" / "paper.yaml")
    gpu = {r["name"] for r in rules if r["resources"].get("gpu")}
    assert gpu == GPU_RULES == set(load(SHIPPED)["set-resources"])
