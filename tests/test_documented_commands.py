"""Every command in README.md and docs/*.md runs as written.

The commands are read from the documents themselves: each logical line of a fenced ```bash block
(continuations joined, comments dropped, a for/if block as one command) and every backticked command
in a table cell that starts with a program. REGISTRY below says, for each of them, how it is checked:

- ``run``: runs as written (after the listed substitutions) and must succeed;
- ``dry-run``: needs real data, a cluster or long CPU time: snakemake with ``-n``, ``make -n`` with
  the snakemake lines of its recipe run with ``-n``, pytest with ``--collect-only``;
- ``stop: <text>``: runs up to its documented stop and must fail with that text;
- ``help``: a benchmark (run by hand, minutes to hours): ``--help`` must list every option written;
- ``covered: <file>``: another part of CI runs it as written; <file> must contain it;
- ``not-run``: cannot run here (a cluster's GPU node, a tool the project does not install) or names
  a program without being a command; checked for shell syntax only.

Every entry other than ``run`` says why. A documented command without an entry, or an entry that
matches no documented command, fails the test: a new command in the docs needs a decision here.

Where they run: a *checkout* is a temporary folder holding a symbolic link to every top-level file of
this repository (so `snakemake`, `make`, `.venv/bin/...`, `python benchmarks/...` work as from the
repository root, and nothing is written into it) plus, for
- ``tiny``: a copy of the shared tiny study (tests/conftest.py: data/, results/, .snakemake/) and
  ``SNAKEMAKE_PROFILE`` naming tests/data/documented_commands_profile (configfile tests/data/tiny.yaml):
  commands written for the demo run against the tiny study, the demo's ``results/demo/`` written
  ``results/`` (DEMO_TO_TINY);
- ``fresh``: nothing else (the demo's default config; config/paper.yaml for the study's dry runs),
  and ``repo``: the repository itself, for read-only commands.
Both checkouts also hold ``scans/`` (one tiny-study scan), ``cases.tsv`` (that scan), a nnU-Net v1
model folder at the path docs/released_weights.md uses (random weights), a TCIA-style DICOM export
at ``tcia/`` and ``segment.yaml``. HOME is a folder of the checkout. Real runs go first (they make
what later commands read: the NIH folder the study's dry runs need, the imported bundle), then dry
runs, stops and help; the two checkouts run side by side.

A new or changed documented command: add or edit its one E(...) line in REGISTRY (the failure names
the document and line). Run: ``PYTHONPATH=$PWD .venv/bin/pytest -q tests/test_documented_commands.py``
(the shared tiny study first, then about a minute on 2 cores; ``-m "not workflow"`` checks only the
registry against the documents, in seconds).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROFILE = REPO / "tests" / "data" / "documented_commands_profile"

# ---- the registry: one line per documented command ------------------------------------------------
DEMO_TO_TINY = {"results/demo/": "results/"}
FILL_IN = "stop: profiles/slurm: fill in your cluster's site settings first"
WHY_CLUSTER = "profiles/slurm ships FILL_IN_ placeholders for account and partitions; no cluster here"
WHY_STUDY = "the study needs the real downloads (about 25 GB) and GPUs"


@dataclass(frozen=True)
class E:
    text: str  # the command exactly as documented
    how: str  # run | dry-run | stop: <text> | help | covered: <file> | not-run
    why: str = ""  # required unless how == run
    where: str = "tiny"  # tiny | fresh | repo
    sub: dict = field(default_factory=dict)  # documented text -> what the test writes instead, in order
    setup: str = ""  # shell run in the checkout before the command
    creates: str = ""  # a path the command must leave (relative to the checkout)


REGISTRY = [
    # README.md
    E("make demo", "dry-run", "the whole SYNTHETIC demo: about 28 minutes on 2 cores", where="fresh"),
    E("make test", "covered: .ci/run", "the test suite itself (this test is part of it)"),
    E("snakemake --cores 2", "dry-run", "the whole SYNTHETIC demo: about 28 minutes on 2 cores", where="fresh"),
    E("snakemake -n", "run"),
    E("snakemake --cores 2 results/demo/T1/nnunet/centers/NYU/metrics.tsv", "run", sub=DEMO_TO_TINY,
      setup="rm results/T1/nnunet/centers/NYU/metrics.tsv", creates="results/T1/nnunet/centers/NYU/metrics.tsv"),
    E("snakemake --cores 2 results/T1/nnunet/centers/NYU/metrics.tsv", "run",
      setup="rm results/T1/nnunet/centers/NYU/metrics.tsv", creates="results/T1/nnunet/centers/NYU/metrics.tsv"),
    E("snakemake --cores 8 --configfile=config/paper.yaml", "dry-run", WHY_STUDY, where="fresh"),
    E("python -m workflow_scripts.evaluate --pred DIR --ref DIR --out FILE.csv", "run",
      sub={"--pred DIR": "--pred results/T1/nnunet/centers/NYU/ensemble_masks",
           "--ref DIR": "--ref results/T1/pansegnet/centers/NYU/ensemble_masks", "FILE.csv": "nnunet_vs_pansegnet.csv"},
      creates="nnunet_vs_pansegnet.csv"),
    E("python -m workflow_scripts.segment --bundle B.tar --input DIR --out DIR", "run",
      sub={"B.tar": "results/T1/pansegnet/bundle/panseg_T1_pansegnet.tar", "--input DIR": "--input scans/",
           "--out DIR": "--out seg/"}, creates="seg/summary.csv"),
    E("python -m workflow_scripts.bundle import-v1 --model-dir DIR --modality T1 --model NAME --out B.tar", "run",
      where="fresh", sub={"DIR": "downloads/PanSegNet/Task110_T1/nnTransUNetTrainerV2__nnUNetPlansv2.1",
                          "NAME": "pansegnet_released", "B.tar": "bundles/panseg_T1_released.tar"},
      creates="bundles/panseg_T1_released.tar"),
    E("python -m workflow_scripts.bundle predict --bundle B.tar --cases TSV --out DIR", "run", where="fresh",
      sub={"B.tar": "bundles/panseg_T1_released.tar", "TSV": "cases.tsv", "DIR": "masks/"},
      creates="masks/NYU_0001.nii.gz"),
    E("snakemake --profile profiles/slurm --configfile=config/paper.yaml", FILL_IN, WHY_CLUSTER, where="fresh"),
    E("make lint", "covered: .ci/run", "CI runs it before `make test`; its commands run here (next lines) and in "
      "tests/test_architecture.py (lint-imports)"),
    E("make test-unit", "not-run", "the unit tier (`pytest -m unit`) of the suite that `make test` runs whole"),
    E("snakemake --lint", "run", where="fresh"),
    E("snakefmt --check .", "run", where="repo"),
    E("python benchmarks/bench_attention.py", "help", "benchmark: minutes of CPU (softmax attention at 32k tokens)"),
    E("python benchmarks/bench_train_step.py --data data/demo [--features 32 64 128 256]", "help",
      "benchmark: needs the demo's preprocessed data and minutes of CPU"),
    E("python benchmarks/bench_models.py [--patch 32 96 96]", "help", "benchmark: needs up to 16 GB and many minutes"),
    E("python benchmarks/bench_segment.py --bundle results/demo/T1/<model>/bundle/panseg_T1_<model>.tar --sizes demo "
      "--scans 3", "help", "benchmark: a fresh process per scan, minutes"),
    E("python benchmarks/bench_stats.py", "help", "benchmark: the statistics step at the study's size, about 10 s "
      "of CPU with a few hundred MB of synthetic tables"),
    E("python benchmarks/bench_metrics.py", "help", "benchmark: medpy's hd95 takes 11 s per call on 512x512x100"),
    E("python benchmarks/bench_v1_import.py --work /tmp/bench_v1 --tile", "help",
      "benchmark: a paper-size network on a T1-sized scan, about 10 minutes"),
    E("python benchmarks/bench_v1_import.py --work /tmp/bench_v1 --compare-v2 [--segment-first]", "help",
      "benchmark: a paper-size network on a T1-sized scan, about 15 minutes"),
    # docs/cluster.md
    E("snakemake --profile profiles/slurm --configfile config/paper.yaml", FILL_IN, WHY_CLUSTER, where="fresh"),
    E("snakemake --profile profiles/slurm --configfile config/paper.yaml --conda-create-envs-only", FILL_IN,
      WHY_CLUSTER, where="fresh"),
    E("mkdir -p ~/.config/snakemake && cp -r profiles/slurm ~/.config/snakemake/slurm", "run", where="fresh",
      creates="home/.config/snakemake/slurm/config.yaml"),
    E("snakemake --profile slurm --configfile config/paper.yaml", FILL_IN,
      WHY_CLUSTER + " (the profile copied to ~/.config/snakemake/slurm by the command before)", where="fresh"),
    E('srun -p <gpu partition> --gpus=1 conda run -p .snakemake/conda/<hash> python -c "import torch; '
      'print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"', "not-run",
      "runs on a GPU node of a SLURM cluster in a conda env the profile built; no cluster, GPU or conda here"),
    E("snakemake --profile profiles/slurm --profile tests/slurm/profile --configfile tests/slurm/cluster.yaml",
      "dry-run", "submits to a SLURM cluster: tests/test_slurm.py runs it for real on one it starts", where="fresh"),
    E("sudo tests/slurm/cluster.sh install", "covered: .ci/run", "installs Debian's SLURM packages as root"),
    E("python -m pytest -q tests/test_slurm.py", "dry-run",
      "starts a SLURM cluster as root; `make test` runs it (skipped, saying why, without the packages)", where="fresh"),
    E("sbatch", "not-run", "names the program in the profile's key table, not a command"),
    E("conda", "not-run", "a value in the profile's key table (software-deployment-method), not a command"),
    E("squeue", "not-run", "a value in the profile's key table (slurm-status-command), not a command"),
    E("sbatch --requeue", "not-run", "names the sbatch option slurm-requeue adds, not a command"),
    # docs/real_data.md
    E("python -m workflow_scripts.sources.nih --dicom /path/to/Pancreas-CT --labels "
      "/path/to/TCIA_pancreas_labels-02-05-2017 --out data/local/nih_pancreas_ct", "run", where="fresh",
      sub={"/path/to/": "tcia/"}, creates="data/local/nih_pancreas_ct/imagesTr/PANCREAS_0001.nii.gz"),
    E("snakemake --cores 4 --configfile=config/paper.yaml data/manifest.tsv", "dry-run",
      "downloads about 18 GB (OSF, the Decathlon)", where="fresh"),
    E("export OSF_TOKEN=...", "run", where="fresh"),
    E('for d in /path/to/Pancreas-CT/PANCREAS_*; do\nn=$(basename "$d")\ndcm2niix -z y -f "$n" -o '
      'data/local/nih_pancreas_ct/imagesTr "$d"\ncp "/path/to/TCIA_pancreas_labels-02-05-2017/label${n#PANCREAS_}'
      '.nii.gz" "data/local/nih_pancreas_ct/labelsTr/$n.nii.gz"\ndone', "not-run",
      "dcm2niix is not part of this project's environment; the documented converter above runs instead"),
    # docs/released_weights.md and docs/segment.md
    E("source .venv/bin/activate", "run", where="fresh"),
    E("python -m workflow_scripts.bundle import-v1 --model-dir downloads/PanSegNet/Task110_T1/"
      "nnTransUNetTrainerV2__nnUNetPlansv2.1 --modality T1 --model pansegnet_released --out "
      "bundles/panseg_T1_released.tar", "run", where="fresh", creates="bundles/panseg_T1_released.tar"),
    E("python -m workflow_scripts.bundle verify bundles/panseg_T1_released.tar", "run", where="fresh"),
    E("python -m workflow_scripts.segment --bundle bundles/panseg_T1_released.tar --input scans/ --out seg/ "
      "--no-mirroring", "run", where="fresh", creates="seg/masks/NYU_0001.nii.gz"),
    E("python -m workflow_scripts.bundle predict --bundle bundles/panseg_T1_released.tar --cases cases.tsv --out "
      "masks/", "run", where="fresh", creates="masks/NYU_0001.nii.gz"),
    E("python -m workflow_scripts.bundle verify results/T1/pansegnet/bundle/panseg_T1_pansegnet.tar", "run"),
    E("python -m workflow_scripts.segment --bundle panseg_T1_pansegnet.tar --input scans/ --out seg/", "run",
      sub={"panseg_T1_pansegnet.tar": "results/T1/pansegnet/bundle/panseg_T1_pansegnet.tar"},
      creates="seg/masks/NYU_0001.nii.gz"),
    E("snakemake --cores 8 segment_all --configfile config/paper.yaml segment.yaml", "dry-run",
      WHY_STUDY + " (its bundles are the study's)", where="fresh"),
    E("snakemake --cores 8 results/segment/ward7_2024 --configfile config/paper.yaml segment.yaml", "dry-run",
      WHY_STUDY + " (its bundles are the study's)", where="fresh"),
    E("snakemake --profile profiles/slurm segment_all --configfile config/paper.yaml segment.yaml", FILL_IN,
      WHY_CLUSTER, where="fresh"),
    E("python benchmarks/bench_segment.py --bundle results/demo/T1/nnunet/bundle/panseg_T1_nnunet.tar --threads 2",
      "help", "benchmark: a fresh process per scan size, a CT-sized scan takes minutes"),
    # docs/results.md
    E("snakemake --report results/report.html", "run", creates="results/report.html"),
]

# ---- reading the documents ------------------------------------------------------------------------
PROGRAMS = {"snakemake", "snakefmt", "python", "python3", "pytest", "pip", "make", "conda", "mamba", "sbatch",
            "srun", "squeue", "sacct", "scancel", "scontrol", "sinfo", "sacctmgr", "sudo", "source", "export",
            "mkdir", "cp", "rm", "git", "dcm2niix", "bash", "sh"}
OPENERS, CLOSERS = {"for", "while", "until", "if", "case"}, {"done", "fi", "esac"}


@dataclass(frozen=True)
class Documented:
    doc: str
    line: int
    text: str


def strip_comment(line: str) -> str:
    """The line without a shell comment (`#` at the start or after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def bash_commands(lines: list[tuple[int, str]]):
    """Logical lines of one bash block: `\\` continuations joined, for/if/while blocks kept together."""
    start, parts, depth = None, [], 0
    for number, raw in lines:
        line = strip_comment(raw).strip()
        if not line and not parts:
            continue
        start = start or number
        words = line.replace(";", " ").split()
        depth += sum(w in OPENERS for w in words[:1]) - sum(w in CLOSERS for w in words[:1])
        if line.endswith("\\"):
            parts.append(line[:-1].strip() + " ")
            continue
        parts.append(line + ("\n" if depth > 0 else ""))
        if depth <= 0:
            yield start, "".join(parts).strip()
            start, parts, depth = None, [], 0


def is_command(text: str) -> bool:
    first = text.split()[0]
    if first in PROGRAMS or first.startswith(".venv/bin/"):
        return True
    path = REPO / first  # a script of this repository (tests/slurm/cluster.sh), not a data file
    return "/" in first and path.is_file() and os.access(path, os.X_OK)


def documented_commands() -> list[Documented]:
    found = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        name = doc.relative_to(REPO).as_posix()
        i = 0
        while i < len(lines):
            fence = re.match(r"^\s*```(\w*)\s*$", lines[i])
            if fence:
                end = next(j for j in range(i + 1, len(lines)) if re.match(r"^\s*```\s*$", lines[j]))
                if fence.group(1) == "bash":
                    block = [(j + 1, lines[j]) for j in range(i + 1, end)]
                    found += [Documented(name, n, text) for n, text in bash_commands(block)]
                i = end + 1
                continue
            if lines[i].lstrip().startswith("|"):
                cells = re.findall(r"`([^`]+)`", lines[i].replace("\\|", "|"))  # `a\|b`: a pipe inside a cell
                found += [Documented(name, i + 1, c) for c in cells if is_command(c)]
            i += 1
    return found


COMMANDS = documented_commands()
ENTRIES = {e.text: e for e in REGISTRY}


def test_every_documented_command_has_an_entry():
    missing = [f"{c.doc}:{c.line}: {c.text!r}" for c in COMMANDS if c.text not in ENTRIES]
    assert not missing, ("documented commands without an entry in REGISTRY (say how each is checked):\n"
                         + "\n".join(missing))


def test_every_entry_matches_a_documented_command():
    texts = {c.text for c in COMMANDS}
    stale = [e.text for e in REGISTRY if e.text not in texts]
    assert not stale, f"REGISTRY entries that match no documented command (update or remove them): {stale}"
    assert len(ENTRIES) == len(REGISTRY), "a command is listed twice in REGISTRY"


def test_entries_are_well_formed():
    for e in REGISTRY:
        kind = e.how.split(":")[0]
        assert kind in {"run", "dry-run", "stop", "help", "covered", "not-run"}, e
        assert e.where in {"tiny", "fresh", "repo"}, e
        assert kind == "run" or e.why, f"say why {e.text!r} is not run as written"
        assert kind != "stop" or e.how.split(":", 1)[1].strip(), e
        for old in e.sub:
            assert old in e.text, f"substitution {old!r} does not occur in {e.text!r}"


def test_extraction_reads_blocks_and_tables():
    """The reader itself: continuations, comments, compound commands, tables (on a known snippet)."""
    block = [(1, "# a comment"), (2, "python -m x --a 1 \\"), (3, "    --b 2   # why"), (4, ""),
             (5, "for d in a b; do"), (6, '  echo "$d # not a comment"'), (7, "done"), (8, "echo ${n#X}")]
    assert list(bash_commands(block)) == [(2, "python -m x --a 1 --b 2"),
                                          (5, 'for d in a b; do\necho "$d # not a comment"\ndone'),
                                          (8, "echo ${n#X}")]
    assert is_command("make lint") and is_command("tests/slurm/cluster.sh install")
    assert not is_command("benchmarks/data/panseg_t1_plans.json") and not is_command("--device auto")


# ---- running them ---------------------------------------------------------------------------------
def concrete(e: E) -> str:
    text = e.text
    for old, new in e.sub.items():
        text = text.replace(old, new)
    return text


def checks(e: E) -> list[str]:
    """The shell commands that check entry `e` (after substitutions)."""
    cmd, kind = concrete(e), e.how.split(":")[0]
    words = cmd.split()
    if kind in ("run", "stop"):
        return [cmd]
    if kind == "help":
        program = cmd.split(" --")[0].split(" [")[0]
        return [f"{program} --help"]
    if kind == "dry-run":
        if Path(words[0]).name == "snakemake":
            return [f"{cmd} -n"]
        if words[0] == "make":
            return [f"make -n {' '.join(words[1:])}"]  # its snakemake lines follow (run_all)
        if words[:3] == ["python", "-m", "pytest"]:
            return [f"{cmd} --collect-only -p no:cacheprovider"]
    if kind in ("covered", "not-run"):
        return []
    raise AssertionError(f"no way to check {e}")


PHASES = {"run": 0, "dry-run": 1, "stop": 2, "help": 3}


def write_checkout_inputs(root: Path, tiny: Path):
    """What the documents assume a user has: scans, a table of them, a v1 model folder, a TCIA export."""
    import SimpleITK as sitk
    import torch

    import v1_models as V
    from dicom_series import write_series

    image = tiny / "data" / "raw" / "synthetic" / "t1" / "imagesTr" / "NYU_0001_0000.nii.gz"
    label = tiny / "data" / "raw" / "synthetic" / "t1" / "labelsTr" / "NYU_0001.nii.gz"
    (root / "scans").mkdir()
    shutil.copy(image, root / "scans" / "NYU_0001_0000.nii.gz")
    (root / "cases.tsv").write_text("case_id\timage\nNYU_0001\tscans/NYU_0001_0000.nii.gz\n", encoding="utf-8")
    # the authors' PanSegNet as nnU-Net v1 saves it (random weights), where docs/released_weights.md has it;
    # a coarse plan whose patch holds the whole resampled scan (14 x 24 x 31): one window, 8 mirrored passes
    plans = V.v1_plans([16, 24, 32], [6.0, 5.0, 5.0], [[1, 2, 2], [2, 2, 2], [2, 2, 2]],
                       [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]], use_mask=True)
    torch.manual_seed(0)
    V.save_v1_folder(root / "downloads" / "PanSegNet" / "Task110_T1", "nnTransUNetTrainerV2",
                     V.naive_pansegnet(plans), plans)
    # NIH Pancreas-CT as TCIA delivers it: PANCREAS_<NNNN>/<study>/<series>/*.dcm and label<NNNN>.nii.gz
    series = root / "tcia" / "Pancreas-CT" / "PANCREAS_0001" / "study" / "series"
    write_series(sitk.ReadImage(str(image)), series, "1.2.826.0.1.3680043.8.498.77")
    (root / "tcia" / "TCIA_pancreas_labels-02-05-2017").mkdir(parents=True)
    shutil.copy(label, root / "tcia" / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz")
    # docs/segment.md's segment.yaml, with folders that exist here (a bundle the study exports, one imported)
    (root / "segment.yaml").write_text(
        "segment:\n"
        "  ward7_2024:\n    bundle: results/T1/pansegnet/bundle/panseg_T1_pansegnet.tar\n    input: scans\n"
        "  ct_archive:\n    bundle: bundles/panseg_T1_released.tar\n    input: scans\n    device: cuda\n",
        encoding="utf-8")  # bundles/: written by the import-v1 run before the dry runs
    (root / "home").mkdir()


def make_checkout(root: Path, tiny: Path | None) -> Path:
    root.mkdir(parents=True)
    skip = {".git", "data", "results", ".snakemake", ".pytest_cache", "__pycache__"}
    for item in REPO.iterdir():
        if item.name not in skip:
            (root / item.name).symlink_to(item)
    if tiny is not None:
        for name in ("data", "results", ".snakemake"):
            shutil.copytree(tiny / name, root / name, symlinks=True)
    return root


def shell(cmd: str, cwd: Path, env: dict, timeout=600) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
    return rc, out, time.monotonic() - t0


def run_checkout(entries: list[E], cwd: Path, env: dict, results: dict):
    """Run the entries' checks in order (real runs first); the same command after the same setup runs once."""
    done: dict[tuple, list] = {}
    for e in sorted(entries, key=lambda e: PHASES[e.how.split(":")[0]]):
        key = (e.setup, tuple(checks(e)))
        if key not in done:
            outcome = []
            if e.setup:
                rc, out, _ = shell(e.setup, cwd, env)
                assert rc == 0, f"setup of {e.text!r} failed: {out}"
            for cmd in checks(e):
                outcome.append((cmd, *shell(cmd, cwd, env)))
                if cmd.startswith("make -n"):  # then the snakemake lines of its recipe, dry
                    lines = [ln for ln in outcome[-1][2].splitlines() if re.match(r"^\S*snakemake\s", ln)]
                    assert lines, f"`{cmd}` shows no snakemake command:\n{outcome[-1][2]}"
                    outcome += [(f"{ln} -n", *shell(f"{ln} -n", cwd, env)) for ln in lines]
            done[key] = outcome
        results[e.text] = (cwd, done[key])


@pytest.fixture(scope="module")
def outcomes(tiny_study, tmp_path_factory):
    base = tmp_path_factory.mktemp("documented-commands")
    roots = {"tiny": make_checkout(base / "tiny", tiny_study), "fresh": make_checkout(base / "fresh", None)}
    for root in roots.values():
        write_checkout_inputs(root, tiny_study)
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")  # the environment, active
    envs = {}
    for where, root in roots.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE", "PYTEST"))}
        env.update(PATH=path, HOME=str(root / "home"), OMP_NUM_THREADS="1")
        if where == "tiny":
            env["SNAKEMAKE_PROFILE"] = str(PROFILE)
        envs[where] = env
    roots["repo"], envs["repo"] = REPO, envs["fresh"]
    results: dict = {}
    documented = {c.text for c in COMMANDS}
    by_where = {w: [e for e in EXECUTED if e.where == w and e.text in documented] for w in roots}
    with ThreadPoolExecutor(max_workers=2) as pool:  # the two checkouts side by side
        jobs = [pool.submit(run_checkout, by_where["tiny"], roots["tiny"], envs["tiny"], results),
                pool.submit(lambda: (run_checkout(by_where["fresh"], roots["fresh"], envs["fresh"], results),
                                     run_checkout(by_where["repo"], REPO, envs["repo"], results)))]
        for job in jobs:
            job.result()
    return results


def describe(outcome) -> str:
    return "\n".join(f"$ {cmd}\n(exit {rc}, {secs:.1f} s)\n{out[-3000:]}" for cmd, rc, out, secs in outcome)


NOT_EXECUTED = [e for e in REGISTRY if e.how.split(":")[0] in ("covered", "not-run")]
EXECUTED = [e for e in REGISTRY if e not in NOT_EXECUTED]


@pytest.mark.parametrize("entry", NOT_EXECUTED, ids=lambda e: e.text[:60])
def test_command_checked_elsewhere_or_not_run(entry):
    """Valid shell; a `covered` command is in the file named, as written (less a leading sudo)."""
    syntax = subprocess.run(["bash", "-n", "-c", entry.text], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{entry.text!r} is not valid shell: {syntax.stderr}"
    kind, _, where = entry.how.partition(":")
    if kind == "covered":
        path = REPO / where.strip()
        assert entry.text.removeprefix("sudo ") in path.read_text(encoding="utf-8"), f"{path} does not run it"


@pytest.mark.workflow
@pytest.mark.parametrize("entry", EXECUTED, ids=lambda e: e.text[:60])
def test_documented_command(entry, outcomes):
    kind, _, detail = entry.how.partition(":")
    detail = detail.strip()
    if entry.text not in outcomes:
        pytest.fail(f"{entry.text!r} matches no documented command")
    cwd, outcome = outcomes[entry.text]
    assert outcome, f"nothing ran for {entry.text!r}"
    if kind == "stop":
        (_, rc, out, _), = outcome
        assert rc != 0 and detail in out, f"expected a stop with {detail!r}:\n{describe(outcome)}"
        return
    for cmd, rc, out, _ in outcome:
        assert rc == 0, describe(outcome)
    if kind == "help":
        options = re.findall(r"(?<!\S)(--[a-z][\w-]*)", concrete(entry).replace("[", " "))
        missing = [o for o in options if o not in outcome[0][2]]
        assert not missing, f"--help does not list {missing}:\n{describe(outcome)}"
    if kind == "dry-run" and Path(shlex.split(outcome[-1][0])[0]).name == "snakemake":
        out = outcome[-1][2]
        assert "This was a dry-run" in out or "Nothing to be done" in out, describe(outcome)
    if entry.creates:
        assert (cwd / entry.creates).exists(), f"{entry.creates} was not written:\n{describe(outcome)}"
