"""The workflow on a real SLURM cluster, through the shipped profile.

A one-node cluster from Debian's packages (tests/slurm/cluster.sh: munge, slurmctld, slurmd, two
fake GPUs) runs a tiny SYNTHETIC study (tests/slurm/cluster.yaml) with

    snakemake --profile profiles/slurm --profile tests/slurm/profile --configfile tests/slurm/cluster.yaml

where the second profile only swaps the site settings (partition, no account, no conda). While
it runs, one training job is requeued by SLURM after its first checkpoint (`scontrol requeue`,
what preemption with PreemptMode=REQUEUE does): it must start again and resume from that
checkpoint. Then the sbatch options are checked and the results compared with a local run of
the same config. Needs root (or password-less sudo) and the packages (`tests/slurm/cluster.sh
install`, which .ci/run does); skipped with the reason otherwise, or when PANSEG_SLURM_TEST=0.
Every step has a timeout and the cluster is stopped (only the daemons it started, and the
processes of its jobs) whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from helpers import REPO

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
CONFIG = REPO / "tests" / "slurm" / "cluster.yaml"
RUN_TIMEOUT = 900  # s, a guard: both runs together take 3.5 to 4 minutes on 2 cores
RUN = "Dataset903_T1/NnUNetTrainer__nnUNetPlans__3d_fullres"
# predict_oof: one out-of-fold prediction job per fold (the prediction step is apart from training)
CLUSTER_RULES = {"synthetic_source": 1, "prepare_center": 2, "preprocess": 1, "train": 2, "predict_oof": 2,
                 "predict_external": 1, "evaluate_center": 2}
LOCAL_RULES = {"manifest", "nnunet_raw", "split", "collect_cv_masks", "tables"}


def _root_prefix() -> list[str] | None:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10).returncode == 0:
        return ["sudo", "-n"]
    return None


def _have(cmd: str) -> bool:
    return bool(shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin"))


def _cluster_processes() -> list[int]:
    """Daemons and job processes of the test cluster that are still alive."""
    left = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            comm = (proc / "comm").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if b"SLURM_CLUSTER_NAME=panseg-test" in environ or comm in ("slurmctld", "slurmd", "slurmstepd"):
            left.append(int(proc.name))
    return left


def _cluster(action: str, prefix: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(prefix + [str(CLUSTER), action], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("PANSEG_SLURM_TEST") == "0":
        pytest.skip("SLURM test: switched off by PANSEG_SLURM_TEST=0")
    prefix = _root_prefix()
    if prefix is None:
        if os.environ.get("PANSEG_SLURM_INSTALLED") == "1":
            pytest.fail("SLURM test: .ci/run installed SLURM as root, but the test cannot become root")
        pytest.skip("SLURM test: needs root or password-less sudo to start slurmd and munged")
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged") if not _have(c)]
    if missing and os.environ.get("PANSEG_SLURM_INSTALLED") == "1":
        pytest.fail(f"SLURM test: .ci/run installed SLURM, yet {', '.join(missing)} cannot be found")
    if missing:
        pytest.skip(f"SLURM test: {', '.join(missing)} not installed (`tests/slurm/cluster.sh install`, run by .ci/run)")
    started = _cluster("start", prefix, timeout=150)
    if started.returncode != 0:
        _cluster("stop", prefix, timeout=120)
        pytest.fail(f"the test cluster did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield prefix
    finally:
        stopped = _cluster("stop", prefix, timeout=120)
        assert stopped.returncode == 0, f"cluster.sh stop failed:\n{stopped.stderr}"
        assert not _cluster_processes(), f"processes of the test cluster still run: {_cluster_processes()}"


def _squeue() -> list[dict]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%k|%T"], capture_output=True, text=True, timeout=20)
    return [dict(zip(("id", "comment", "state"), line.split("|"))) for line in out.stdout.splitlines() if line]


def _scontrol_jobs() -> dict[str, dict[str, str]]:
    """`scontrol show job` of every job the controller still knows (MinJobAge after the end)."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, timeout=20).stdout
    jobs = [dict(re.findall(r"(\w[\w/:]*)=(\S*)", line)) for line in out.splitlines()]
    return {job["JobId"]: job for job in jobs if "JobId" in job}


@dataclass
class SlurmRun:
    work: Path
    returncode: int
    seconds: float
    log: str
    requeued: str | None
    submitted: dict[str, str] = field(default_factory=dict)  # SLURM job id -> sbatch call
    jobs: dict[str, dict] = field(default_factory=dict)  # SLURM job id -> `scontrol show job`

    def calls(self, rule: str) -> dict[str, str]:
        return {i: c for i, c in self.submitted.items() if f"--comment rule_{rule}_wildcards_" in c
                or c.rstrip().endswith(f"--comment rule_{rule}")}


def _start(cmd: list[str], log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               OMP_NUM_THREADS="1")
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # Snakemake cancels its SLURM jobs on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The SLURM run, and beside it a local run of the same config to compare with.

    They overlap: the SLURM run spends much of its time waiting for the scheduler and for status
    checks, and both have single-threaded phases (sources, nnU-Net preprocessing, prediction).
    """
    work, local = tmp_path_factory.mktemp("slurm"), tmp_path_factory.mktemp("local")
    snake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(CONFIG)]
    local_proc = _start(snake + ["--directory", str(local), "--cores", "2"], local / "snakemake.log")
    fold0 = work / "results" / "T1" / "nnunet" / RUN / "fold_0"
    requeued = None
    jobs: dict[str, dict] = {}  # latest `scontrol show job` of every job seen
    t0 = time.time()
    proc = _start(snake + ["--directory", str(work), "--profile", "profiles/slurm", "--profile", "tests/slurm/profile",
                           "--verbose", "--slurm-keep-successful-logs"], work / "snakemake.log")
    try:
        while proc.poll() is None:
            if time.time() - t0 > RUN_TIMEOUT:
                raise TimeoutError(f"the SLURM run took more than {RUN_TIMEOUT} s")
            if requeued is None and (fold0 / "checkpoint_latest.pth").exists():
                # Preempt fold 0 after its first checkpoint: SLURM kills it and queues it again.
                running = [j for j in _squeue() if j["comment"].startswith("rule_train_")
                           and j["comment"].endswith("_0") and j["state"] == "RUNNING"]
                assert running, f"fold 0 wrote a checkpoint but no running training job: {_squeue()}"
                requeued = running[0]["id"]
                rq = subprocess.run(["scontrol", "requeue", requeued], capture_output=True, text=True, timeout=20)
                assert rq.returncode == 0, f"scontrol requeue {requeued}: {rq.stderr}"
                assert not (fold0 / "checkpoint_final.pth").exists(), "fold 0 finished before it was requeued"
            jobs.update(_scontrol_jobs())
            time.sleep(0.5)
        seconds = time.time() - t0
        jobs.update(_scontrol_jobs())
        local_proc.wait(timeout=max(60, RUN_TIMEOUT - (time.time() - t0)))
    except BaseException:
        _stop(proc)
        _stop(local_proc)
        print((work / "snakemake.log").read_text(encoding="utf-8")[-6000:])
        raise
    text = (work / "snakemake.log").read_text(encoding="utf-8")
    # The plugin logs each sbatch call (--verbose) and then the job id; two submission threads may
    # interleave them, so calls are matched to ids by their --output file (.../%j.log).
    calls = {}
    for call in re.findall(r"sbatch call: (sbatch [^\n]*)", text):
        options = call.split(" --wrap=")[0]
        calls[re.search(r"--output (\S+)", options).group(1).strip("'")] = options
    submitted = {}
    for job_id, slurm_log in re.findall(r"has been submitted with SLURM jobid (\d+) \(log: ([^)]+)\)", text):
        submitted[job_id] = calls.get(slurm_log.replace(f"/{job_id}.log", "/%j.log"), "")
    (work / "scontrol.json").write_text(json.dumps(jobs, indent=1))
    assert local_proc.returncode == 0, (local / "snakemake.log").read_text(encoding="utf-8")[-6000:]
    return SlurmRun(work, proc.returncode, seconds, text, requeued, submitted, jobs), local


@pytest.fixture(scope="module")
def slurm_run(runs):
    return runs[0]


@pytest.fixture(scope="module")
def local_run(runs):
    return runs[1]


def test_slurm_run_completes(slurm_run):
    assert slurm_run.returncode == 0, slurm_run.log[-6000:]
    tables = slurm_run.work / "results" / "tables"
    assert (tables / "summary.csv").exists() and (tables / "per_case.tsv").exists()
    print(f"SLURM run: {slurm_run.seconds:.0f} s, {len(slurm_run.submitted)} jobs submitted")


def test_heavy_rules_are_submitted_light_rules_run_locally(slurm_run):
    assert len(slurm_run.submitted) == sum(CLUSTER_RULES.values()), slurm_run.submitted
    for rule, count in CLUSTER_RULES.items():
        assert len(slurm_run.calls(rule)) == count, f"{rule}: {slurm_run.calls(rule)}"
    for rule in LOCAL_RULES:
        assert not slurm_run.calls(rule)
        # split is a checkpoint: Snakemake logs it as "localcheckpoint split:"
        assert f"localrule {rule}:" in slurm_run.log or f"localcheckpoint {rule}:" in slurm_run.log, rule


def test_training_jobs_request_a_gpu(slurm_run):
    train = slurm_run.calls("train")
    assert len(train) == 2
    for job_id, call in train.items():
        # what the profile and the rule's resources (config resources.train) turn into
        for option in ("--gpus=1", "--requeue", "-p panseg", "--mem 2000", "-t 10", "--cpus-per-task=1"):
            assert option in call.split() or option in call, f"{option} missing from: {call}"
        assert " -A " not in call  # the test cluster has no accounts
        job = slurm_run.jobs[job_id]
        assert job.get("TresPerJob") == "gres:gpu:1", job
        assert job["Requeue"] == "1" and job["Partition"] == "panseg" and job["JobState"] == "COMPLETED", job
    for rule in ("predict_oof", "predict_external"):  # the prediction step runs where the GPUs are
        for job_id, call in slurm_run.calls(rule).items():
            assert "--gpus=1" in call and "-p panseg" in call, call
    for rule in ("prepare_center", "preprocess", "evaluate_center", "synthetic_source"):
        for job_id, call in slurm_run.calls(rule).items():
            assert "--gpus" not in call and "--requeue" in call, call
            assert "TresPerJob" not in slurm_run.jobs[job_id] or "gpu" not in slurm_run.jobs[job_id]["TresPerJob"]
    for call in slurm_run.calls("predict_external").values():
        assert "--gpus=1" in call


def test_requeued_training_resumes_from_its_checkpoint(slurm_run):
    assert slurm_run.requeued, "no training job was requeued"
    job = slurm_run.jobs[slurm_run.requeued]
    assert job["Restarts"] == "1" and job["JobState"] == "COMPLETED", job
    fold = slurm_run.work / "results" / "T1" / "nnunet" / RUN / "fold_0"
    train_log = (slurm_run.work / "results" / "logs" / "train" / "T1" / "nnunet" / RUN / "fold_0.log").read_text(encoding="utf-8")
    assert "resuming fold 0" in train_log, train_log[-3000:]
    curve = pd.read_csv(fold / "training_curve.tsv", sep="\t")
    assert len(curve) == 4 and curve.train_losses.notna().all()  # every epoch once, none lost
    assert (fold / "checkpoint_final.pth").exists()


DETERMINISTIC = [
    "data/manifest.tsv",
    "data/splits/T1.json",
    "data/splits/T1.tsv",
    "data/prepared/T1/AHN.tsv",
    "data/prepared/T1/NYU.tsv",
    "data/nnunet_preprocessed/T1/Dataset903_T1/nnUNetPlans.json",
    "data/nnunet_preprocessed/T1/Dataset903_T1/dataset.json",
    "data/nnunet_preprocessed/T1/Dataset903_T1/dataset_fingerprint.json",
]


@pytest.mark.parametrize("path", DETERMINISTIC)
def test_same_data_as_a_local_run(slurm_run, local_run, path):
    assert (slurm_run.work / path).read_bytes() == (local_run / path).read_bytes(), path


def test_same_metrics_as_a_local_run(slurm_run, local_run):
    """Training on the CPU with fixed seeds and one thread is deterministic: fold 1 (never
    interrupted) gives bit-identical metrics on both runs. Fold 0 was requeued and resumed from
    a checkpoint, which does not restore the random state of data augmentation, so its cases
    (and the fold ensemble of the external center) only match in shape."""
    cols = ["case", "center", "role", "model", "participant_id"]
    cluster = pd.read_csv(slurm_run.work / "results" / "tables" / "per_case.tsv", sep="\t")
    local = pd.read_csv(local_run / "results" / "tables" / "per_case.tsv", sep="\t")
    assert list(cluster.columns) == list(local.columns)
    pd.testing.assert_frame_equal(cluster[cols], local[cols])
    fold1 = json.loads((local_run / "data" / "splits" / "T1.json").read_text(encoding="utf-8"))[1]["val"]
    assert fold1
    metrics = [c for c in local.columns if c not in cols and local[c].dtype.kind == "f"]
    a = cluster.set_index("case").loc[fold1, metrics]
    b = local.set_index("case").loc[fold1, metrics]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    summary = [pd.read_csv(w / "results" / "tables" / "summary.csv") for w in (slurm_run.work, local_run)]
    assert summary[0].shape == summary[1].shape and list(summary[0].scope) == list(summary[1].scope)
